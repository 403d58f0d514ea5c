"""The distributed train step's TrainJob launched and awaited on the real control plane, reconciled by the real
Kubeflow Trainer and JobSet controllers.

A TrainJob the launcher creates goes through Trainer's webhooks, becomes a JobSet (Trainer), Jobs (JobSet) and
pods (kube-controller-manager) that the scheduler places; kwok runs the pods: a Job pod completes at once, and one
labelled with kwok's chaos Stage label fails. Every condition the launcher acts on is the one Trainer computed from
JobSet's status. No container runs here: in the end-to-end test the test itself runs the pods' torchrun command
(Gloo, on the CPU, the shared volume mapped to a folder) before the TrainJob goes to the API server, then the
controllers complete it.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from kubernetes import client

from components.train_distributed.step import (
    GROUP,
    JOBSET_NAME_LABEL,
    PLURAL,
    SHARED_MOUNT_PATH,
    VERSION,
    TrainJobError,
    launch_trainjob,
    render_trainjob,
    run_train_distributed,
)
from mlplatform.deploy.scheduling import unschedulable
from mlplatform.settings import PlatformSettings
from mlplatform.training.loop import TrainConfig
from mlplatform.training.model import ModelConfig, load_model
from scripts.kube.sandbox import TOOLS, ControlPlane
from tests.conftest import Prepared
from tests.k8s import helm_cluster as hc
from tests.k8s.cluster import api_client, apply_objects, eventually, get_json, kubectl, token_client

pytestmark = [pytest.mark.k8s, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[2]
CLAIM = hc.SHARED_CLAIM
#: kwok's chaos Stage (scripts/kube/build.sh, KWOK_STAGES) fails a running pod with this label.
FAILS = "pod-container-running-failed.stage.kwok.x-k8s.io"
#: A copy of the torch runtime whose Jobs are not retried (the upstream one leaves Kubernetes' default of six
#: retries with exponential backoff, minutes before a failing pod fails its TrainJob).
NO_RETRY_RUNTIME = "torch-distributed-no-retry"


@pytest.fixture(scope="module")
def namespace(cluster: ControlPlane) -> Iterator[str]:
    """A namespace with the shared ReadWriteMany claim the TrainJob's pods mount, bound to a volume."""
    ns = f"train-{uuid.uuid4().hex[:6]}"
    apply_objects(cluster, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
    hc.create_shared_claim(cluster, ns)
    yield ns
    kubectl(cluster, "delete", "namespace", ns, "--wait=false")
    kubectl(cluster, "delete", "pv", f"{ns}-{hc.SHARED_CLAIM}", "--wait=false", check=False)


@pytest.fixture(scope="module")
def api(cluster: ControlPlane) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client(cluster))


def _trainjob(namespace: str, name: str, *, gpus: int = 0, runtime: str = "torch-distributed") -> dict[str, Any]:
    return render_trainjob(
        name=name,
        namespace=namespace,
        image="ghcr.io/mlplatform/mlplatform-components:0.1.0",
        runtime=runtime,
        pvc_name=CLAIM,
        run_dir=f"{SHARED_MOUNT_PATH}/{name}/train-distributed",
        config=TrainConfig(max_epochs=2),
        model_config=ModelConfig(feature_names=["a"], hidden_units=[8]),
        num_nodes=2,
        gpus_per_node=gpus,
        cpu_per_node="1",
        memory_per_node="1Gi",
    )


def _pods(cluster: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    return get_json(cluster, "pods", "-n", namespace, "-l", f"{JOBSET_NAME_LABEL}={name}")["items"]


def _launch(api: client.CustomObjectsApi, body: dict[str, Any], timeout: float = 60, **kw: Any) -> dict[str, Any]:
    return launch_trainjob(api, body, poll_interval_seconds=0.2, timeout_seconds=timeout, **kw)


def test_a_trainjob_is_reconciled_into_pods_that_run_to_completion(
    cluster: ControlPlane, namespace: str, api: client.CustomObjectsApi
) -> None:
    body = _trainjob(namespace, "tj-complete")
    done = _launch(api, body)
    complete = next(c for c in done["status"]["conditions"] if c["type"] == "Complete")
    assert complete["status"] == "True"
    # what Trainer made of it: a JobSet of its name with one Job of two pods (numNodes), the torch runtime's env
    jobset = get_json(cluster, "jobset", "tj-complete", "-n", namespace)
    assert jobset["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"
    assert any(c["type"] == "Completed" and c["status"] == "True" for c in jobset["status"]["conditions"])
    pods = _pods(cluster, namespace, "tj-complete")
    assert len(pods) == 2 and {p["status"]["phase"] for p in pods} == {"Succeeded"}
    for pod in pods:
        assert pod["spec"]["nodeName"] == "mlplatform-worker"  # CPU-only: placed by the scheduler off the GPU worker
        container = pod["spec"]["containers"][0]
        assert container["command"] == body["spec"]["trainer"]["command"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "1"  # torchrun's, set by the runtime
        assert {"name": "shared", "persistentVolumeClaim": {"claimName": CLAIM}} in pod["spec"]["volumes"]


def test_a_retried_launch_attaches_to_its_trainjob(
    cluster: ControlPlane, namespace: str, api: client.CustomObjectsApi
) -> None:
    body = _trainjob(namespace, "tj-retried")
    first = _launch(api, body)
    again = _launch(api, copy.deepcopy(body))  # a retried task: the API server answers 409, the launcher attaches
    assert again["metadata"]["uid"] == first["metadata"]["uid"]
    assert len(_pods(cluster, namespace, "tj-retried")) == 2  # nothing ran twice


def test_a_trainjob_of_the_same_name_with_another_spec_is_refused(namespace: str, api: client.CustomObjectsApi) -> None:
    _launch(api, _trainjob(namespace, "tj-other"))
    other = _trainjob(namespace, "tj-other", gpus=1)
    with pytest.raises(TrainJobError, match="already exists with another spec"):
        _launch(api, other)


@pytest.fixture(scope="module")
def no_retry_runtime(cluster: ControlPlane) -> str:
    """The sandbox's torch-distributed ClusterTrainingRuntime with `backoffLimit: 0` on its Job (through Trainer's
    validating webhook)."""
    runtime = _yaml_documents(TOOLS / "trainer" / "runtimes.yaml")[0]
    runtime["metadata"] = {"name": NO_RETRY_RUNTIME, "labels": runtime["metadata"].get("labels", {})}
    runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["backoffLimit"] = 0
    apply_objects(cluster, [runtime])
    return NO_RETRY_RUNTIME


def _yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_a_failing_pod_fails_the_trainjob_with_the_controllers_reason(
    cluster: ControlPlane, namespace: str, api: client.CustomObjectsApi, no_retry_runtime: str
) -> None:
    body = _trainjob(namespace, "tj-failed", runtime=no_retry_runtime)
    node = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    node["template"]["spec"]["template"]["metadata"] = {"labels": {FAILS: "true"}}
    with pytest.raises(TrainJobError, match=r"TrainJob .*/tj-failed failed \(.+\).*checkpoints are kept") as err:
        _launch(api, body)
    assert "retry the task to resume" in str(err.value)
    assert any(p["status"]["phase"] == "Failed" for p in _pods(cluster, namespace, "tj-failed"))


def test_a_trainjob_past_its_timeout_is_deleted_with_what_it_owns(
    cluster: ControlPlane, namespace: str, api: client.CustomObjectsApi
) -> None:
    body = _trainjob(namespace, "tj-timeout", gpus=8)  # more GPUs per node than any node has: never scheduled
    core = client.CoreV1Api(api_client(cluster))
    logged: list[str] = []
    with pytest.raises(TrainJobError, match="did not complete within 5 s; deleted it; its pods were never scheduled"):
        _launch(
            api,
            body,
            timeout=5,
            why_pending=lambda: unschedulable(core, namespace, f"{JOBSET_NAME_LABEL}=tj-timeout"),
            log=logged.append,
        )
    assert logged and "Insufficient nvidia.com/gpu" in logged[0]
    # deleted, and the garbage collector removes its JobSet and pods: the GPUs it asked for are free again
    eventually(
        lambda: not kubectl(cluster, "get", "trainjob,jobset,pods", "-n", namespace, "-o", "name").count("tj-timeout"),
        "the TrainJob, its JobSet and its pods gone",
    )


def test_an_api_server_restart_while_waiting_is_ridden_out(
    cluster: ControlPlane, namespace: str, api: client.CustomObjectsApi
) -> None:
    class RestartsAfterCreate:
        """The real API, whose server is stopped right after the TrainJob was created and started 3 s later."""

        def __init__(self) -> None:
            self.reads_failed = 0

        def create_namespaced_custom_object(self, *args: Any) -> Any:
            created = api.create_namespaced_custom_object(*args)
            cluster.halt("kube-apiserver")
            threading.Timer(3, lambda: cluster.launch("kube-apiserver")).start()
            return created

        def get_namespaced_custom_object(self, *args: Any) -> Any:
            try:
                return api.get_namespaced_custom_object(*args, _request_timeout=2)
            except Exception:
                self.reads_failed += 1
                raise

        def delete_namespaced_custom_object(self, *args: Any) -> Any:
            return api.delete_namespaced_custom_object(*args)

    restarting = RestartsAfterCreate()
    done = _launch(restarting, _trainjob(namespace, "tj-restart"), timeout=90)
    assert restarting.reads_failed > 0  # it did wait through the restart
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in done["status"]["conditions"])
    eventually(cluster.api_ready, "API server back", timeout=60)


def test_a_refusal_is_not_retried(cluster: ControlPlane, namespace: str) -> None:
    """A 403 (the namespace's default ServiceAccount has no Role) is an answer, not an outage: raised at once."""
    from kubernetes.client.exceptions import ApiException

    refused = client.CustomObjectsApi(token_client(cluster, "default", namespace))
    started = time.monotonic()
    with pytest.raises(ApiException) as err:
        _launch(refused, _trainjob(namespace, "tj-refused"), timeout=60)
    assert err.value.status == 403 and time.monotonic() - started < 10


def test_with_the_api_server_down_the_launch_fails_clearly_at_its_deadline(
    cluster: ControlPlane, namespace: str, api: client.CustomObjectsApi
) -> None:
    cluster.halt("kube-apiserver")
    try:
        started = time.monotonic()
        with pytest.raises(TrainJobError, match="did not answer while creating it within 3 s.*retry the task"):
            _launch(api, _trainjob(namespace, "tj-unreachable"), timeout=3)
        assert time.monotonic() - started < 30
    finally:
        cluster.launch("kube-apiserver")
        eventually(cluster.api_ready, "API server back", timeout=60)


class PlaysThePods:
    """The real API, with the pods' work done by the test: no container runs here, so before the TrainJob is
    created the test runs its torchrun command (numNodes x numProcPerNode processes, Gloo on the CPU) with the
    shared volume mapped to a folder. The TrainJob then goes through the real controllers, which complete it."""

    def __init__(self, api: client.CustomObjectsApi, shared_root: Path) -> None:
        self.api, self.shared_root = api, shared_root

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, body: dict):
        trainer = body["spec"]["trainer"]
        assert trainer["command"][:3] == ["torchrun", "-m", "mlplatform.training.ddp"]
        args = [a.replace(SHARED_MOUNT_PATH, str(self.shared_root)) for a in trainer["command"][1:]]
        nproc = trainer["numNodes"] * trainer["numProcPerNode"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return self.api.create_namespaced_custom_object(group, version, namespace, plural, body)

    def get_namespaced_custom_object(self, *args: Any) -> Any:
        return self.api.get_namespaced_custom_object(*args)

    def delete_namespaced_custom_object(self, *args: Any) -> Any:
        return self.api.delete_namespaced_custom_object(*args)


@pytest.mark.slow
def test_distributed_train_step_trains_with_two_processes_and_logs_like_the_train_step(
    tmp_path: Path, prepared: Prepared, cluster: ControlPlane, namespace: str, api: client.CustomObjectsApi
) -> None:
    settings = PlatformSettings(work_dir=tmp_path, trainjob_poll_interval_seconds=0.2, trainjob_timeout_seconds=120)
    shared = tmp_path / "shared"
    config = TrainConfig(max_epochs=3, batch_size=1024, seed=3, checkpoint_interval_seconds=0)
    outcome = run_train_distributed(
        prepared.splits["train"],
        prepared.splits["validation"],
        tmp_path / "model",
        config,
        settings,
        PlaysThePods(api, shared),
        run_key="fraud-training-distributed-run-1",
        namespace=namespace,
        pvc_name=CLAIM,
        num_nodes=2,
        gpus_per_node=0,
        shared_root=shared,
        core_api=client.CoreV1Api(api_client(cluster)),
    )
    run_dir = shared / "fraud-training-distributed-run-1" / "train-distributed"
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    model, model_config = load_model(tmp_path / "model")
    assert 0 < model_config.threshold < 1 and model_config.metadata["mlflow_run_id"] == outcome.mlflow_run_id
    assert outcome.epochs_run == 3
    run = mlflow.MlflowClient(settings.tracking_uri).get_run(outcome.mlflow_run_id)
    assert run.data.tags["world_size"] == "2"
    assert run.data.params["num_nodes"] == "2"
    assert run.data.tags["trainjob"].startswith(f"{namespace}/train-fraud-training-distributed-run-1")
    assert json.loads((run_dir / "model" / "training_result.json").read_text())["world_size"] == 2
    trainjob = api.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, run.data.tags["trainjob"].split("/")[1]
    )
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in trainjob["status"]["conditions"])
