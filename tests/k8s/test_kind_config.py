"""kind-config.yaml agrees with the training task's GPU scheduling settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.training import GPU_NODE_LABEL, GPU_TAINT_KEY

pytestmark = pytest.mark.k8s

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_worker_label_and_taint_match_the_train_task() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [n["role"] for n in config["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") == 2
    gpu = [n for n in config["nodes"] if n.get("labels", {}).get(GPU_NODE_LABEL[0]) == GPU_NODE_LABEL[1]]
    assert len(gpu) == 1
    join = yaml.safe_load(gpu[0]["kubeadmConfigPatches"][0])
    taints = join["nodeRegistration"]["taints"]
    assert any(t["key"] == GPU_TAINT_KEY and t["effect"] == "NoSchedule" for t in taints)
