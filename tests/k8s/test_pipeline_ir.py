"""The compiled pipeline (KFP IR). It is not a Kubernetes object, so kubeconform cannot check it; what
is checked instead: every executor runs one of our pinned images, and the train task carries the GPU
request, node selector and toleration that match kind-config.yaml's GPU worker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipelines import compile_pipeline
from pipelines.training import GPU_ACCELERATOR, GPU_NODE_LABEL, GPU_TAINT_KEY, MLFLOW_CREDENTIALS_SECRET
from tests.k8s.test_images import OURS

pytestmark = pytest.mark.k8s


@pytest.fixture(scope="module")
def ir(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    path = compile_pipeline(Path(tmp_path_factory.mktemp("ir")) / "training_pipeline.yaml")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_every_executor_runs_our_pinned_component_image(ir: list[dict]) -> None:
    executors = ir[0]["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert images and all(OURS.match(i) for i in images), images


def test_train_task_requests_a_gpu_on_the_tainted_gpu_nodes(ir: list[dict]) -> None:
    spec = ir[0]
    train = next(name for name in spec["root"]["dag"]["tasks"] if re.fullmatch(r"train(-\d+)?", name))
    executor = spec["root"]["dag"]["tasks"][train]["componentRef"]["name"].replace("comp-", "exec-")
    resources = spec["deploymentSpec"]["executors"][executor]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == GPU_ACCELERATOR
    assert str(resources["accelerator"]["resourceCount"]) == "1"
    platform = ir[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"][executor]
    assert platform["nodeSelector"]["labels"] == {GPU_NODE_LABEL[0]: GPU_NODE_LABEL[1]}
    assert {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"} in platform["tolerations"]


def test_every_task_reads_the_pipeline_runners_mlflow_credentials_from_its_secret(ir: list[dict]) -> None:
    """The registry lets only the pipeline runner's MLflow user register versions and move aliases: every step
    authenticates as it, with credentials from a Secret (optional: a server without authentication needs none)."""
    executors = ir[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(executors) == len(ir[0]["deploymentSpec"]["executors"])
    for name, platform in executors.items():
        [secret] = platform["secretAsEnv"]
        assert secret["secretName"] == MLFLOW_CREDENTIALS_SECRET and secret["optional"] is True, name
        assert {m["secretKey"]: m["envVar"] for m in secret["keyToEnv"]} == {
            "username": "MLFLOW_TRACKING_USERNAME",
            "password": "MLFLOW_TRACKING_PASSWORD",
        }, name
