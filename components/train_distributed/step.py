"""Distributed train: a Kubeflow Trainer TrainJob running `torchrun -m mlplatform.training.ddp`, launched and awaited.

The pipeline task and the TrainJob's pods share a ReadWriteMany volume mounted at `SHARED_MOUNT_PATH`:
the task writes the training arrays there, the TrainJob checkpoints and writes the model there, and the
task then chooses the threshold, saves the model artifact and logs the MLflow run as the train step does.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from components.train.step import (
    TrainOutcome,
    finish_training,
    log_epoch,
    log_training_params,
    start_or_resume_run,
)
from mlplatform import registry
from mlplatform.deploy.inferenceservice import is_transient
from mlplatform.deploy.scheduling import unschedulable
from mlplatform.errors import MlPlatformError
from mlplatform.features.compute import MODEL_FEATURES, model_input
from mlplatform.settings import PlatformSettings
from mlplatform.training.loop import EpochResult, TrainConfig, TrainResult
from mlplatform.training.model import ModelConfig, load_model

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
#: Where the shared volume is mounted, in the pipeline task and in every TrainJob pod.
SHARED_MOUNT_PATH = "/mnt/mlplatform-shared"
#: Replicated job and container of the torch runtimes shipped with Kubeflow Trainer (torch-distributed).
RUNTIME_NODE = "node"
SPEC_HASH_LABEL = "mlplatform.io/spec-hash"
PATCH_MANAGER = "mlplatform.io/train-distributed"
#: The label JobSet puts on the pods of the JobSet a TrainJob creates (named after the TrainJob).
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"


class TrainJobError(MlPlatformError):
    """The TrainJob failed, timed out, or a different one already holds its name."""


class CustomObjectsApi(Protocol):
    """The part of `kubernetes.client.CustomObjectsApi` used here."""

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, body: dict): ...

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str): ...

    def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str): ...


def trainjob_name(run_key: str) -> str:
    """A valid, deterministic TrainJob name for a pipeline run: a retried task finds its own TrainJob."""
    digest = hashlib.sha256(run_key.encode()).hexdigest()[:8]
    stem = re.sub(r"[^a-z0-9-]+", "-", run_key.lower()).strip("-")[:40].strip("-")
    return f"train-{stem}-{digest}" if stem else f"train-{digest}"


def render_trainjob(
    *,
    name: str,
    namespace: str,
    image: str,
    runtime: str,
    pvc_name: str,
    run_dir: str,
    config: TrainConfig,
    model_config: ModelConfig,
    num_nodes: int,
    gpus_per_node: int,
    cpu_per_node: str = "8",
    memory_per_node: str = "32Gi",
    gpu_node_label: tuple[str, str] = ("nvidia.com/gpu.present", "true"),
    gpu_resource: str = "nvidia.com/gpu",
) -> dict[str, Any]:
    """The TrainJob (trainer.kubeflow.org/v1alpha1) for `num_nodes` x `gpus_per_node` DDP processes.

    The torch runtime sets torchrun's `PET_*` variables (nodes, processes per node, rank, master), so
    the command is plain `torchrun -m mlplatform.training.ddp`. Pods run non-root with a read-only root
    filesystem; /tmp is an emptyDir (torch.compile's cache), the shared volume holds data, checkpoints
    and the model.
    """
    if num_nodes < 1 or gpus_per_node < 0:
        raise ValueError(f"num_nodes must be >= 1 and gpus_per_node >= 0, got {num_nodes}, {gpus_per_node}")
    command = [
        *("torchrun", "-m", "mlplatform.training.ddp"),
        *("--data", f"{run_dir}/data.npz", "--output", f"{run_dir}/model"),
        *("--checkpoint-dir", f"{run_dir}/checkpoints", "--config", json.dumps(asdict(config), sort_keys=True)),
        *("--hidden-units", *map(str, model_config.hidden_units), "--dropout", str(model_config.dropout)),
    ]
    resources: dict[str, Any] = {
        "requests": {"cpu": cpu_per_node, "memory": memory_per_node},
        "limits": {"memory": memory_per_node},
    }
    pod_spec: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [
            {"name": "shared", "persistentVolumeClaim": {"claimName": pvc_name}},
            {"name": "tmp", "emptyDir": {}},
        ],
        "containers": [
            {
                "name": RUNTIME_NODE,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [
                    {"name": "shared", "mountPath": SHARED_MOUNT_PATH},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
    }
    if gpus_per_node > 0:
        resources["requests"][gpu_resource] = gpus_per_node
        resources["limits"][gpu_resource] = gpus_per_node
        pod_spec["nodeSelector"] = {gpu_node_label[0]: gpu_node_label[1]}
        pod_spec["tolerations"] = [{"key": gpu_resource, "operator": "Exists", "effect": "NoSchedule"}]
    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": runtime},
        "trainer": {
            "image": image,
            "command": command,
            "numNodes": num_nodes,
            "numProcPerNode": max(gpus_per_node, 1),
            "resourcesPerNode": resources,
            "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
        },
        "runtimePatches": [
            {
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {
                    "template": {
                        "spec": {
                            "replicatedJobs": [
                                {"name": RUNTIME_NODE, "template": {"spec": {"template": {"spec": pod_spec}}}}
                            ]
                        }
                    }
                },
            }
        ],
    }
    spec_hash = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/part-of": "mlplatform",
                "app.kubernetes.io/component": "train",
                SPEC_HASH_LABEL: spec_hash,
            },
        },
        "spec": spec,
    }


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in obj.get("status", {}).get("conditions", []) or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def launch_trainjob(
    api: CustomObjectsApi,
    body: dict[str, Any],
    poll_interval_seconds: float,
    timeout_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    why_pending: Callable[[], list[str]] = list,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Create the TrainJob (or attach to the one a previous attempt created) and wait until it completes.

    While it waits, the scheduler's reasons for pods it cannot place (`why_pending`, e.g. no free GPU node)
    are logged when they change and named in the timeout error.

    Returns:
        The completed TrainJob as the API server returned it.

    The API server not answering (a restart, throttling: no answer, 429, 5xx) is waited out until the deadline,
    for the create and for every read; the job is judged only by its own conditions.

    Raises:
        TrainJobError: It failed (condition Failed), did not finish within `timeout_seconds` (it is then
            deleted, freeing its GPUs), was deleted by someone else, a TrainJob of the same name has another
            spec, or the API server did not answer until the deadline.
    """
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    where = f"TrainJob {ns}/{name}"
    deadline = clock() + timeout_seconds

    while True:  # create, or attach to the TrainJob a previous attempt of this task created (409)
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
            break
        except Exception as exc:  # ApiException, or no answer at all (urllib3): the API server restarting
            if getattr(exc, "status", None) == 409:
                break
            if not is_transient(exc):
                raise
            failure = exc
        if clock() >= deadline:
            raise TrainJobError(
                f"{where}: the API server did not answer while creating it within {timeout_seconds:.0f} s "
                f"(retried: {failure}); retry the task: it attaches to the TrainJob if it was created"
            ) from failure
        sleep(poll_interval_seconds)
    pending: list[str] = []
    checked = False
    while True:
        try:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except Exception as exc:  # the API server restarting or throttling is not the job failing
            if getattr(exc, "status", None) == 404:
                raise TrainJobError(
                    f"{where} was deleted while the task waited for it (by a person or another task); "
                    "retry the task to start it again"
                ) from None
            if not is_transient(exc):
                raise
            obj = {}
        if obj and not checked:  # ours, or one a previous attempt made with the same spec
            theirs = obj.get("metadata", {}).get("labels", {}).get(SPEC_HASH_LABEL)
            if theirs != meta["labels"][SPEC_HASH_LABEL]:
                raise TrainJobError(
                    f"{where} already exists with another spec (label {SPEC_HASH_LABEL}={theirs}); "
                    f"delete it (kubectl delete trainjob -n {ns} {name}) or start a new pipeline run"
                )
            checked = True
        if _condition(obj, "Complete"):
            return obj
        failed = _condition(obj, "Failed")
        if failed:
            raise TrainJobError(
                f"{where} failed ({failed.get('reason', 'no reason')}): {failed.get('message', '')}; its checkpoints "
                f"are kept: delete it (kubectl delete trainjob -n {ns} {name}) and retry the task to resume"
            )
        reasons = why_pending()
        if reasons and reasons != pending:
            log(f"{where}: pods not scheduled: " + "; ".join(reasons))
        pending = reasons
        if clock() >= deadline:
            why = f"; its pods were never scheduled: {'; '.join(pending)}" if pending else ""
            try:
                api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                raise TrainJobError(
                    f"{where} did not complete within {timeout_seconds:.0f} s and could not be deleted (the API "
                    f"server did not answer: {exc}): delete it with kubectl delete trainjob -n {ns} {name}{why}"
                ) from exc
            raise TrainJobError(f"{where} did not complete within {timeout_seconds:.0f} s; deleted it{why}")
        sleep(poll_interval_seconds)


def run_train_distributed(
    train_path: Path,
    validation_path: Path,
    model_dir: Path,
    config: TrainConfig,
    settings: PlatformSettings,
    api: CustomObjectsApi,
    *,
    run_key: str,
    namespace: str,
    pvc_name: str,
    num_nodes: int,
    gpus_per_node: int,
    shared_root: Path = Path(SHARED_MOUNT_PATH),
    hidden_units: list[int] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    core_api: Any | None = None,
) -> TrainOutcome:
    """Train on `num_nodes` x `gpus_per_node` GPUs with a TrainJob, then save and log the model as `run_train`.

    Everything is keyed by `run_key` (the pipeline job name): a retried task reuses the data, attaches
    to the running TrainJob and continues the MLflow run; the TrainJob itself resumes from the
    checkpoints on the shared volume when JobSet restarts its pods. With `core_api` (a CoreV1Api), the
    scheduler's reasons for TrainJob pods it cannot place are reported while waiting.
    """
    train, val = pd.read_parquet(train_path), pd.read_parquet(validation_path)
    x_tr, y_tr = model_input(train), train["is_fraud"].to_numpy(np.float32)
    x_va, y_va = model_input(val), val["is_fraud"].to_numpy(np.float32)
    model_config = ModelConfig(feature_names=list(MODEL_FEATURES), hidden_units=hidden_units or [64, 32])

    import mlflow

    from mlplatform.training.ddp import RESULT_FILE, save_training_data  # torch: seconds to import, only when used

    # <shared root>/<run key>/train-distributed, the same path as mounted in the TrainJob's pods.
    run_dir = settings.model_copy(update={"checkpoint_root": shared_root}).checkpoint_dir(run_key, "train-distributed")
    pod_run_dir = Path(SHARED_MOUNT_PATH) / run_dir.relative_to(shared_root.resolve())
    data = {"x_train": x_tr, "y_train": y_tr, "x_val": x_va, "y_val": y_va}
    save_training_data(run_dir / "data.npz", data, model_config.feature_names)
    body = render_trainjob(
        name=trainjob_name(run_key),
        namespace=namespace,
        image=settings.component_image,
        runtime=settings.trainjob_runtime,
        pvc_name=pvc_name,
        run_dir=str(pod_run_dir),
        config=config,
        model_config=model_config,
        num_nodes=num_nodes,
        gpus_per_node=gpus_per_node,
    )
    experiment_id = registry.configure(settings)
    with start_or_resume_run(experiment_id, run_key, None, run_dir) as run:
        log_training_params(config, model_config, len(train), len(val))
        mlflow.log_params({"num_nodes": num_nodes, "gpus_per_node": gpus_per_node})
        mlflow.set_tag("trainjob", f"{namespace}/{body['metadata']['name']}")
        selector = f"{JOBSET_NAME_LABEL}={body['metadata']['name']}"  # JobSet names the pods after the TrainJob
        launch_trainjob(
            api,
            body,
            settings.trainjob_poll_interval_seconds,
            settings.trainjob_timeout_seconds,
            sleep=sleep,
            why_pending=(lambda: unschedulable(core_api, namespace, selector)) if core_api is not None else list,
        )
        model, _ = load_model(run_dir / "model")
        summary = json.loads((run_dir / "model" / RESULT_FILE).read_text())
        history = [EpochResult(**h) for h in summary["history"]]
        for h in history:
            log_epoch(h)
        result = TrainResult(
            model=model,
            history=history,
            best_epoch=summary["best_epoch"],
            device=summary["device"],
            resumed_from_epoch=summary["resumed_from_epoch"],
            world_size=summary["world_size"],
        )
        return finish_training(result, model_config, x_tr, x_va, y_va, model_dir, run.info.run_id)
