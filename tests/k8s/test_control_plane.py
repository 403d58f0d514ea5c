"""The sandbox control plane itself: the real API server's version, RBAC and admission, kind-shaped kwok nodes,
and the real scheduler and controllers placing and running workloads (kwok reports the pods Running)."""

from __future__ import annotations

import json

import pytest

from scripts.kube.sandbox import ControlPlane, kind_nodes
from tests.k8s.cluster import apply_objects, eventually, get_json, kubectl

pytestmark = [pytest.mark.k8s, pytest.mark.cluster]


def test_the_api_server_reports_the_pinned_version(cluster: ControlPlane) -> None:
    status, body = cluster.get("/version")
    assert status == 200
    assert json.loads(body)["gitVersion"] == "v1.35.4"


def test_nodes_are_shaped_like_the_kind_cluster(cluster: ControlPlane) -> None:
    nodes = {n["metadata"]["name"]: n for n in get_json(cluster, "nodes")["items"]}
    assert set(nodes) == {"mlplatform-control-plane", "mlplatform-worker", "mlplatform-worker2"}
    gpu = nodes["mlplatform-worker2"]
    assert gpu["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in gpu["spec"]["taints"]
    assert nodes["mlplatform-worker"]["metadata"]["labels"]["mlplatform.io/pool"] == "cpu"
    assert "nvidia.com/gpu" not in nodes["mlplatform-worker"]["status"]["allocatable"]
    for node in nodes.values():
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node["metadata"]["name"]
    # the same shape as the file says, so a change of kind-config.yaml changes the sandbox
    assert {n["metadata"]["name"] for n in kind_nodes()} == set(nodes)


def test_a_deployment_becomes_available_on_the_cpu_worker(cluster: ControlPlane) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "smoke", "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "smoke"}},
            "template": {
                "metadata": {"labels": {"app": "smoke"}},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/none:1"}]},
            },
        },
    }
    apply_objects(cluster, [deployment])
    eventually(
        lambda: get_json(cluster, "deployment/smoke", "-n", "default").get("status", {}).get("availableReplicas") == 2,
        "2/2 replicas available",
    )
    pods = get_json(cluster, "pods", "-n", "default", "-l", "app=smoke")["items"]
    # the control plane's and the GPU worker's taints keep ordinary pods on the CPU worker
    assert {p["spec"]["nodeName"] for p in pods} == {"mlplatform-worker"}
    kubectl(cluster, "delete", "deployment/smoke", "-n", "default", "--wait=true")


def test_rbac_is_enforced_for_a_service_account_without_roles(cluster: ControlPlane) -> None:
    allowed = kubectl(
        cluster, "auth", "can-i", "list", "pods", "--as=system:serviceaccount:default:default", check=False
    ).strip()
    assert allowed == "no"
    assert kubectl(cluster, "auth", "can-i", "list", "pods").strip() == "yes"


def test_admission_refuses_an_invalid_object(cluster: ControlPlane) -> None:
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Not_A_DNS_Name", "namespace": "default"}}
    with pytest.raises(AssertionError, match="Invalid value"):
        apply_objects(cluster, [bad])
