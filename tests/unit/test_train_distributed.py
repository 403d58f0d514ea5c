"""Launching and awaiting the TrainJob, and the distributed train step end to end, against a stand-in API server.

A Kubernetes API server with the Kubeflow Trainer controller cannot run here (no cluster, no container
runtime), so `StandInApi` implements the three CustomObjectsApi calls the step makes with the API
server's semantics (409 when the name exists, 404 when it does not), and plays the controller by
scripted status conditions or, in the end-to-end test, by running the TrainJob's own torchrun command
as local processes (Gloo on the CPU) with the shared volume mapped to a temporary directory.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
from kubernetes.client.exceptions import ApiException

from components.train_distributed.step import (
    SHARED_MOUNT_PATH,
    TrainJobError,
    launch_trainjob,
    render_trainjob,
    run_train_distributed,
)
from mlplatform.settings import PlatformSettings
from mlplatform.training.loop import TrainConfig
from mlplatform.training.model import ModelConfig, load_model
from tests.conftest import Prepared

REPO = Path(__file__).resolve().parents[2]


def condition(kind: str, reason: str = "JobsCreationSucceeded", message: str = "") -> dict:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


class StandInApi:
    """CustomObjectsApi with API-server semantics; `controller(obj, reads)` sets the status on every read."""

    def __init__(self, controller: Callable[[dict, int], None] | None = None) -> None:
        self.objects: dict[tuple[str, str], dict] = {}
        self.controller = controller or (lambda obj, reads: None)
        self.calls: list[str] = []
        self.reads = 0
        self.failures: list[int] = []  # HTTP statuses the next reads fail with

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append("create")
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        key = (namespace, body["metadata"]["name"])
        if key in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        self.objects[key] = copy.deepcopy(body)
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append("get")
        if self.failures:
            raise ApiException(status=self.failures.pop(0), reason="stand-in failure")
        if (namespace, name) not in self.objects:
            raise ApiException(status=404, reason="NotFound")
        obj = self.objects[(namespace, name)]
        self.reads += 1
        self.controller(obj, self.reads)
        return copy.deepcopy(obj)

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append("delete")
        del self.objects[(namespace, name)]


def body(num_nodes: int = 2) -> dict:
    return render_trainjob(
        name="train-run-1-0a1b2c3d",
        namespace="ns",
        image="img",
        runtime="torch-distributed",
        pvc_name="shared",
        run_dir=f"{SHARED_MOUNT_PATH}/run-1/train-distributed",
        config=TrainConfig(),
        model_config=ModelConfig(feature_names=["a"]),
        num_nodes=num_nodes,
        gpus_per_node=1,
    )


def completes_on_read(n: int) -> Callable[[dict, int], None]:
    def controller(obj: dict, reads: int) -> None:
        conds = [condition("Created")] + ([condition("Complete", "JobSetCompleted")] if reads >= n else [])
        obj["status"] = {"conditions": conds}

    return controller


def test_launch_creates_the_trainjob_and_waits_until_it_completes() -> None:
    api, sleeps = StandInApi(completes_on_read(3)), []
    done = launch_trainjob(api, body(), poll_interval_seconds=7, timeout_seconds=600, sleep=sleeps.append)
    assert api.calls == ["create", "get", "get", "get"]
    assert sleeps == [7, 7]
    assert any(c["type"] == "Complete" for c in done["status"]["conditions"])


def test_retried_launch_attaches_to_its_running_trainjob() -> None:
    api = StandInApi(completes_on_read(2))
    api.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", "ns", "trainjobs", body())
    launch_trainjob(api, body(), poll_interval_seconds=1, timeout_seconds=600, sleep=lambda s: None)
    assert len(api.objects) == 1 and api.calls.count("create") == 2  # the retry's create got 409


def test_a_trainjob_of_the_same_name_with_another_spec_is_refused() -> None:
    api = StandInApi(completes_on_read(1))
    api.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", "ns", "trainjobs", body(num_nodes=4))
    with pytest.raises(TrainJobError, match="already exists with another spec"):
        launch_trainjob(api, body(num_nodes=2), poll_interval_seconds=1, timeout_seconds=600, sleep=lambda s: None)


def test_failed_trainjob_raises_with_its_reason() -> None:
    def fails(obj: dict, reads: int) -> None:
        obj["status"] = {"conditions": [condition("Failed", "BackoffLimitExceeded", "node-0 exited with 1")]}

    with pytest.raises(TrainJobError, match=r"failed \(BackoffLimitExceeded\): node-0 exited with 1"):
        launch_trainjob(StandInApi(fails), body(), poll_interval_seconds=1, timeout_seconds=600, sleep=lambda s: None)


def test_trainjob_past_the_timeout_is_deleted() -> None:
    api, now = StandInApi(), [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(TrainJobError, match="did not complete within 60 s"):
        launch_trainjob(api, body(), poll_interval_seconds=25, timeout_seconds=60, sleep=sleep, clock=lambda: now[0])
    assert api.calls[-1] == "delete" and not api.objects


def test_transient_api_errors_while_waiting_are_retried_but_others_are_not() -> None:
    api = StandInApi(completes_on_read(1))
    api.failures = [503, 429]
    launch_trainjob(api, body(), poll_interval_seconds=1, timeout_seconds=600, sleep=lambda s: None)
    api = StandInApi(completes_on_read(1))
    api.failures = [403]
    with pytest.raises(ApiException):
        launch_trainjob(api, body(), poll_interval_seconds=1, timeout_seconds=600, sleep=lambda s: None)


def torchrun_controller(shared_root: Path) -> Callable[[dict, int], None]:
    """Plays the Trainer controller: runs the TrainJob's command with torchrun, numNodes x numProcPerNode processes."""

    def controller(obj: dict, reads: int) -> None:
        if obj.get("status"):
            return
        trainer = obj["spec"]["trainer"]
        assert trainer["command"][:3] == ["torchrun", "-m", "mlplatform.training.ddp"]
        args = [a.replace(SHARED_MOUNT_PATH, str(shared_root)) for a in trainer["command"][1:]]
        nproc = trainer["numNodes"] * trainer["numProcPerNode"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        obj["status"] = {"conditions": [condition("Complete", "JobSetCompleted")]}

    return controller


@pytest.mark.slow
def test_distributed_train_step_trains_with_two_processes_and_logs_like_the_train_step(
    tmp_path: Path, prepared: Prepared
) -> None:
    settings = PlatformSettings(work_dir=tmp_path)
    shared = tmp_path / "shared"
    api = StandInApi(torchrun_controller(shared))
    config = TrainConfig(max_epochs=3, batch_size=1024, seed=3, checkpoint_interval_seconds=0)
    outcome = run_train_distributed(
        prepared.splits["train"],
        prepared.splits["validation"],
        tmp_path / "model",
        config,
        settings,
        api,
        run_key="fraud-training-distributed-run-1",
        namespace="ns",
        pvc_name="shared",
        num_nodes=2,
        gpus_per_node=0,
        shared_root=shared,
        sleep=lambda s: None,
    )
    run_dir = shared / "fraud-training-distributed-run-1" / "train-distributed"
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    model, model_config = load_model(tmp_path / "model")
    assert 0 < model_config.threshold < 1 and model_config.metadata["mlflow_run_id"] == outcome.mlflow_run_id
    assert outcome.epochs_run == 3
    run = mlflow.MlflowClient(settings.tracking_uri).get_run(outcome.mlflow_run_id)
    assert run.data.tags["world_size"] == "2"
    assert run.data.params["num_nodes"] == "2"
    assert json.loads((run_dir / "model" / "training_result.json").read_text())["world_size"] == 2
