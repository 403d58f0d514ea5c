"""The distributed train step's TrainJob, validated strictly against the upstream Kubeflow Trainer CRD."""

from __future__ import annotations

import copy
import json
import re

import jsonschema
import pytest

from components.train_distributed.step import SHARED_MOUNT_PATH, render_trainjob, trainjob_name
from mlplatform.training.loop import TrainConfig
from mlplatform.training.model import ModelConfig
from tests.k8s.crd import validate_custom_resource

pytestmark = pytest.mark.k8s

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def rendered(**overrides) -> dict:
    args = {
        "name": trainjob_name("fraud-training-distributed-abc12"),
        "namespace": "kubeflow-user",
        "image": "ghcr.io/mlplatform/mlplatform-components:0.1.0",
        "runtime": "torch-distributed",
        "pvc_name": "training-shared",
        "run_dir": f"{SHARED_MOUNT_PATH}/fraud-training-distributed-abc12/train-distributed",
        "config": TrainConfig(batch_size=65_536, max_epochs=20),
        "model_config": ModelConfig(feature_names=["a", "b"], hidden_units=[256, 256]),
        "num_nodes": 2,
        "gpus_per_node": 4,
    }
    return render_trainjob(**{**args, **overrides})


@pytest.mark.parametrize("gpus_per_node", [4, 0], ids=["gpu", "cpu-only"])
def test_rendered_trainjob_is_valid_for_the_upstream_crd(gpus_per_node: int) -> None:
    validate_custom_resource(rendered(gpus_per_node=gpus_per_node))


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda o: o["spec"]["trainer"].__setitem__("numProcsPerNode", 4),  # misspelt field
        lambda o: o["spec"].pop("runtimeRef"),  # required
        lambda o: o["spec"]["runtimePatches"][0].pop("manager"),  # list-map key
    ],
    ids=["unknown-field", "missing-runtime-ref", "patch-without-manager"],
)
def test_schema_check_refuses_a_broken_trainjob(corrupt) -> None:
    obj = copy.deepcopy(rendered())
    corrupt(obj)
    with pytest.raises(jsonschema.ValidationError):
        validate_custom_resource(obj)


def test_trainjob_runs_torchrun_with_one_process_per_gpu_on_gpu_nodes() -> None:
    obj = rendered()
    trainer = obj["spec"]["trainer"]
    assert trainer["command"][:3] == ["torchrun", "-m", "mlplatform.training.ddp"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 4
    config = json.loads(trainer["command"][trainer["command"].index("--config") + 1])
    assert TrainConfig(**config) == TrainConfig(batch_size=65_536, max_epochs=20)
    pod = obj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod_spec = pod["template"]["spec"]["template"]["spec"]
    assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod_spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "training-shared"
    container = pod_spec["containers"][0]
    assert container["name"] == "node"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {SHARED_MOUNT_PATH, "/tmp"}
    assert obj["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-distributed",
    }


def test_cpu_only_trainjob_asks_for_no_gpu_and_no_gpu_node() -> None:
    obj = rendered(gpus_per_node=0)
    assert obj["spec"]["trainer"]["numProcPerNode"] == 1
    assert "nvidia.com/gpu" not in obj["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert "nodeSelector" not in json.dumps(obj)


def test_spec_hash_label_changes_with_the_spec_only() -> None:
    label = "mlplatform.io/spec-hash"
    assert rendered()["metadata"]["labels"][label] == rendered()["metadata"]["labels"][label]
    assert rendered()["metadata"]["labels"][label] != rendered(num_nodes=3)["metadata"]["labels"][label]


@pytest.mark.parametrize("key", ["fraud-training-20260101-120000-123456", "Run_With/Odd Chars" * 5, "---"])
def test_trainjob_name_is_a_stable_dns_label(key: str) -> None:
    name = trainjob_name(key)
    assert DNS_LABEL.match(name) and len(name) <= 63
    assert trainjob_name(key) == name
    assert trainjob_name(key + "x") != name
