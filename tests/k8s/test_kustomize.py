"""kustomize base and overlays (and the kind dev services): current with the chart, valid, strict."""

from __future__ import annotations

import subprocess

import pytest

from tests.k8s import kube
from tests.k8s.kube import find, objects

pytestmark = pytest.mark.k8s

BUILDS = ["manifests/base", "manifests/overlays/kind", "manifests/overlays/production", "manifests/dev-services"]


def build(path: str) -> str:
    return kube.run(kube.tool("kustomize"), "build", str(kube.ROOT / path)).stdout


def test_base_is_the_current_rendering_of_the_chart(tmp_path) -> None:
    """manifests/base/mlplatform.yaml is generated (scripts/render_base.sh), never edited by hand."""
    out = tmp_path / "mlplatform.yaml"
    env = {"HELM": kube.tool("helm"), "OUT": str(out), "PATH": "/usr/bin:/bin"}
    subprocess.run(["bash", "scripts/render_base.sh"], cwd=kube.ROOT, check=True, env=env)
    committed = (kube.ROOT / "manifests/base/mlplatform.yaml").read_text()
    assert out.read_text() == committed, "manifests/base/mlplatform.yaml is stale: run bash scripts/render_base.sh"


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
    assert all(d["metadata"].get("namespace", "mlplatform") == "mlplatform" for d in docs)


def test_production_overlay_runs_two_replicas_with_disruption_budgets() -> None:
    docs = objects(build("manifests/overlays/production"))
    for name in ("mlflow", "feature-server"):
        assert find(docs, "Deployment", name)["spec"]["replicas"] == 2
        selector = find(docs, "PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"]
        labels = find(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
