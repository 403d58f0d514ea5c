"""GPU scheduling proven by the real scheduler: the train step's pods and the TrainJob's pods land only on the GPU
worker; with its GPU taken they stay Pending, and the platform reports the scheduler's reason.

The train task's pod is built from the compiled pipeline (KFP IR: accelerator limit, node selector,
toleration) the way the Kubeflow Pipelines backend turns an executor into a pod (a stand-in: the KFP backend
cannot be built here). The TrainJob is the rendered one, created by the launcher: the real Kubeflow Trainer and
JobSet controllers make its pods.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from components.train_distributed.step import JOBSET_NAME_LABEL, TrainJobError, launch_trainjob, render_trainjob
from mlplatform.deploy.scheduling import unschedulable
from mlplatform.training.loop import TrainConfig
from mlplatform.training.model import ModelConfig
from pipelines import compile_pipeline
from scripts.kube.sandbox import ControlPlane
from tests.k8s import helm_cluster as hc
from tests.k8s.cluster import api_client, apply_objects, ensure_namespace, eventually, get_json, kubectl

pytestmark = [pytest.mark.k8s, pytest.mark.cluster]

NS = "gpu-scheduling"
GPU_NODE = "mlplatform-worker2"


@pytest.fixture(scope="module")
def train_pod_spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The train executor of the compiled pipeline as the KFP backend renders its pod (resources, placement)."""
    path = compile_pipeline(Path(tmp_path_factory.mktemp("ir")) / "training_pipeline.yaml")
    spec, platform = [d for d in yaml.safe_load_all(path.read_text()) if d]
    tasks = spec["root"]["dag"]["tasks"]
    train = next(name for name in tasks if re.fullmatch(r"train(-\d+)?", name))
    executor = tasks[train]["componentRef"]["name"].replace("comp-", "exec-")
    container = spec["deploymentSpec"]["executors"][executor]["container"]
    accelerator = container["resources"]["accelerator"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][executor]
    count = str(accelerator["resourceCount"])
    return {
        "restartPolicy": "Never",
        "nodeSelector": k8s["nodeSelector"]["labels"],
        "tolerations": k8s["tolerations"],
        "containers": [
            {
                "name": "main",
                "image": container["image"],
                "resources": {"limits": {accelerator["resourceType"]: count}},
            }
        ],
    }


@pytest.fixture
def namespace(cluster: ControlPlane) -> Iterator[str]:
    ensure_namespace(cluster, NS)
    hc.create_shared_claim(cluster, NS)
    yield NS
    kubectl(cluster, "delete", "trainjobs,pods", "--all", "-n", NS, "--wait=true", "--grace-period=0")


def _pod(name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
        "spec": spec,
    }


def _node_of(cluster: ControlPlane, pod: str) -> str | None:
    return get_json(cluster, f"pod/{pod}", "-n", NS).get("spec", {}).get("nodeName")


def test_the_train_task_lands_on_the_gpu_worker_and_waits_when_its_gpu_is_taken(
    cluster: ControlPlane, namespace: str, train_pod_spec: dict[str, Any]
) -> None:
    apply_objects(cluster, [_pod("train-1", train_pod_spec, {"app": "train"})])
    assert eventually(lambda: _node_of(cluster, "train-1"), "train-1 scheduled") == GPU_NODE
    # the GPU worker has one GPU, held by train-1: a second train task cannot be placed anywhere
    apply_objects(cluster, [_pod("train-2", train_pod_spec, {"app": "train"})])
    core = client.CoreV1Api(api_client(cluster))
    reasons = eventually(lambda: unschedulable(core, NS, "app=train"), "train-2 reported unschedulable")
    assert len(reasons) == 1 and reasons[0].startswith("train-2: Unschedulable: 0/3 nodes are available")
    assert "Insufficient nvidia.com/gpu" in reasons[0]
    # the CPU worker and the control plane are refused for the selector / taint, not for capacity
    assert "didn't match Pod's node affinity/selector" in reasons[0]
    kubectl(cluster, "delete", "pod/train-1", "-n", NS, "--wait=true")
    assert eventually(lambda: _node_of(cluster, "train-2"), "train-2 scheduled once the GPU is free") == GPU_NODE
    assert unschedulable(core, NS, "app=train") == []


def test_without_the_toleration_the_train_task_is_never_placed(
    cluster: ControlPlane, namespace: str, train_pod_spec: dict[str, Any]
) -> None:
    spec = {**train_pod_spec, "tolerations": []}
    apply_objects(cluster, [_pod("untolerated", spec, {"app": "untolerated"})])
    core = client.CoreV1Api(api_client(cluster))
    reasons = eventually(lambda: unschedulable(core, NS, "app=untolerated"), "untolerated pod reported")
    assert "untolerated taint" in reasons[0]  # the GPU worker's nvidia.com/gpu and the control plane's


def _trainjob(name: str, gpus: int) -> dict[str, Any]:
    return render_trainjob(
        name=name,
        namespace=NS,
        image="ghcr.io/mlplatform/mlplatform-components:0.1.0",
        runtime="torch-distributed",
        pvc_name=hc.SHARED_CLAIM,
        run_dir="/mnt/mlplatform-shared/run/train-distributed",
        config=TrainConfig(),
        model_config=ModelConfig(feature_names=["a"], hidden_units=[8]),
        num_nodes=1,
        gpus_per_node=gpus,
        cpu_per_node="1",
        memory_per_node="1Gi",
    )


def _trainjob_nodes(cluster: ControlPlane, name: str) -> set[str | None]:
    """Where the scheduler put the pods JobSet made for the TrainJob (kwok completes them at once)."""
    pods = get_json(cluster, "pods", "-n", NS, "-l", f"{JOBSET_NAME_LABEL}={name}")["items"]
    return {p["spec"].get("nodeName") for p in pods}


def test_trainjob_pods_land_only_on_the_gpu_worker_and_the_launcher_says_why_they_wait(
    cluster: ControlPlane, namespace: str, train_pod_spec: dict[str, Any]
) -> None:
    api = client.CustomObjectsApi(api_client(cluster))
    launch_trainjob(api, _trainjob("tj-first", 1), poll_interval_seconds=0.2, timeout_seconds=60)
    assert _trainjob_nodes(cluster, "tj-first") == {GPU_NODE}
    # a train task holds the GPU worker's one GPU: the next TrainJob's pod cannot be placed anywhere
    apply_objects(cluster, [_pod("gpu-holder", train_pod_spec, {"app": "train"})])
    assert eventually(lambda: _node_of(cluster, "gpu-holder"), "GPU holder scheduled") == GPU_NODE
    core = client.CoreV1Api(api_client(cluster))
    logged: list[str] = []
    with pytest.raises(
        TrainJobError, match=r"never scheduled: tj-second-node-0-0-\w+: Unschedulable: 0/3 nodes"
    ) as err:
        launch_trainjob(
            api,
            _trainjob("tj-second", 1),
            poll_interval_seconds=0.2,
            timeout_seconds=5,
            why_pending=lambda: unschedulable(core, NS, f"{JOBSET_NAME_LABEL}=tj-second"),
            log=logged.append,
        )
    assert "Insufficient nvidia.com/gpu" in str(err.value)
    assert len(logged) == 1 and "pods not scheduled" in logged[0]  # logged once, not at every poll


def test_a_cpu_only_trainjob_pod_stays_off_the_gpu_worker(cluster: ControlPlane, namespace: str) -> None:
    api = client.CustomObjectsApi(api_client(cluster))
    launch_trainjob(api, _trainjob("tj-cpu", 0), poll_interval_seconds=0.2, timeout_seconds=60)
    assert _trainjob_nodes(cluster, "tj-cpu") == {"mlplatform-worker"}
