"""kustomize base and overlays (and the kind dev services): current with the chart, valid, strict."""

from __future__ import annotations

import copy
import subprocess
from typing import Any

import pytest

from tests.k8s import kube
from tests.k8s.kube import find, objects

pytestmark = pytest.mark.k8s

BUILDS = [
    "manifests/base",
    "manifests/overlays/kind",
    "manifests/overlays/production",
    "manifests/dev-services",
    "manifests/components/monitoring",
    "manifests/components/distributed-training",
]


def build(path: str) -> str:
    return kube.run(kube.tool("kustomize"), "build", str(kube.ROOT / path)).stdout


def test_base_and_components_are_the_current_rendering_of_the_chart(tmp_path) -> None:
    """manifests/base/mlplatform.yaml and the components' YAML are generated (scripts/render_base.sh), never
    edited by hand."""
    outputs = {
        "OUT": "manifests/base/mlplatform.yaml",
        "OUT_MONITORING": "manifests/components/monitoring/monitoring.yaml",
        "OUT_TRAINING": "manifests/components/distributed-training/distributed-training.yaml",
    }
    env = {"HELM": kube.tool("helm"), "PATH": "/usr/bin:/bin"} | {k: str(tmp_path / k) for k in outputs}
    subprocess.run(["bash", "scripts/render_base.sh"], cwd=kube.ROOT, check=True, env=env)
    for variable, committed in outputs.items():
        assert (tmp_path / variable).read_text() == (kube.ROOT / committed).read_text(), (
            f"{committed} is stale: run bash scripts/render_base.sh"
        )


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """An object without the labels that differ by installer (helm.sh/chart, app.kubernetes.io/managed-by)."""
    doc = copy.deepcopy(doc)
    for labels in (doc["metadata"].get("labels", {}), *_template_labels(doc)):
        labels.pop("helm.sh/chart", None)
        labels.pop("app.kubernetes.io/managed-by", None)
    return doc


def _template_labels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    template = doc.get("spec", {}).get("template", {}) if doc["kind"] == "Deployment" else {}
    return [template["metadata"]["labels"]] if template else []


MONITORING_KINDS = {"Deployment", "Service", "NetworkPolicy", "ServiceMonitor", "PrometheusRule", "ConfigMap"}


@pytest.mark.parametrize("env", ["kind", "production"])
def test_overlays_install_the_same_monitoring_objects_as_the_helm_profile(env: str) -> None:
    """kubectl users get the monitor, the webhook, their ServiceMonitors and NetworkPolicies, the PrometheusRule
    and the dashboards exactly as `helm install -f profiles/<env>-values.yaml` creates them."""
    component = {(d["kind"], d["metadata"]["name"]) for d in objects(build("manifests/components/monitoring"))}
    assert {k for k, _ in component} == MONITORING_KINDS and len(component) == 15
    overlay = {(d["kind"], d["metadata"]["name"]): d for d in objects(build(f"manifests/overlays/{env}"))}
    no_hooks = {"tests": {"enabled": False}}  # kustomize has no `helm test` hook (manifests/base/values.yaml)
    helm = {(d["kind"], d["metadata"]["name"]): d for d in objects(kube.helm_template(env, kube.WITH_MODEL, no_hooks))}
    for key in sorted(component):
        assert _comparable(overlay[key]) == _comparable(helm[key]), key


def test_production_overlay_installs_the_distributed_training_objects_of_the_helm_profile() -> None:
    """kubectl users of the production overlay get the runner's TrainJob Role, its binding and the shared claim
    exactly as `helm install -f profiles/production-values.yaml` creates them; the kind overlay, like the kind
    profile, has none."""
    component = {
        (d["kind"], d["metadata"]["name"]) for d in objects(build("manifests/components/distributed-training"))
    }
    assert component == {
        ("Role", "mlplatform-distributed-training"),
        ("RoleBinding", "mlplatform-distributed-training"),
        ("PersistentVolumeClaim", "mlplatform-training-shared"),
    }
    overlay = {(d["kind"], d["metadata"]["name"]): d for d in objects(build("manifests/overlays/production"))}
    no_hooks = {"tests": {"enabled": False}}
    helm = {
        (d["kind"], d["metadata"]["name"]): d
        for d in objects(kube.helm_template("production", kube.WITH_MODEL, no_hooks))
    }
    for key in sorted(component):
        assert _comparable(overlay[key]) == _comparable(helm[key]), key
    kind = {(d["kind"], d["metadata"]["name"]) for d in objects(build("manifests/overlays/kind"))}
    assert not component & kind


@pytest.mark.parametrize("path", BUILDS)
def test_every_build_is_valid_against_the_kubernetes_schemas(path: str) -> None:
    manifest = build(path)
    summary = kube.kubeconform(manifest)["summary"]
    assert summary["valid"] == len(objects(manifest)) > 0 and summary["skipped"] == 0


def test_kind_overlay_points_at_the_dev_services_and_binds_the_kfp_runner() -> None:
    docs = objects(build("manifests/overlays/kind"))
    mlflow = find(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in mlflow["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio.mlplatform-deps.svc.cluster.local:9000"
    server = find(docs, "Deployment", "feature-server")["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in server["env"]}["MLPLATFORM_FEAST_REDIS"].startswith(
        "redis.mlplatform-deps"
    )
    subjects = find(docs, "RoleBinding")["subjects"]
    assert {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"} in subjects
    # the steps run in namespace kubeflow and read their settings there, as with the kind Helm profile
    settings = find(docs, "ConfigMap", "pipeline-settings")
    helm = find(objects(kube.helm_template("kind", kube.WITH_MODEL)), "ConfigMap", "pipeline-settings")
    assert settings["metadata"]["namespace"] == helm["metadata"]["namespace"] == "kubeflow"
    assert settings["data"] == helm["data"]
    assert all(d["metadata"].get("namespace", "mlplatform") == "mlplatform" for d in docs if d is not settings)


def test_production_overlay_runs_two_replicas_with_disruption_budgets() -> None:
    docs = objects(build("manifests/overlays/production"))
    for name in ("mlflow", "feature-server"):
        assert find(docs, "Deployment", name)["spec"]["replicas"] == 2
        selector = find(docs, "PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"]
        labels = find(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
