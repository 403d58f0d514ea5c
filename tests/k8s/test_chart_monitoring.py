"""The chart's monitoring switch: monitor and webhook Deployments, ServiceMonitors, PrometheusRule, dashboards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.k8s import kube
from tests.k8s.kube import find, objects

pytestmark = pytest.mark.k8s

ROOT = Path(__file__).resolve().parents[2]
MONITORING_KINDS = {"PrometheusRule", "ServiceMonitor"}


def _names(docs: list[dict], kind: str) -> set[str]:
    return {d["metadata"]["name"] for d in docs if d["kind"] == kind}


def test_monitoring_is_off_by_default(render) -> None:
    docs = objects(render("default", True))
    assert not [d for d in docs if d["kind"] in MONITORING_KINDS]
    assert not {"mlplatform-monitor", "mlplatform-webhook"} & _names(docs, "Deployment")
    assert not [d for d in docs if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]]


def test_production_runs_monitor_and_webhook_scraped_under_the_job_names_the_rules_use(render) -> None:
    docs = objects(render("production", True))
    assert {"mlplatform-monitor", "mlplatform-webhook"} <= _names(docs, "Deployment")
    for component, job, port in (
        ("monitor", "mlplatform-monitor", "metrics"),
        ("webhook", "mlplatform-webhook", "http"),
    ):
        service = find(docs, "Service", f"mlplatform-{component}")
        assert service["metadata"]["labels"]["mlplatform.io/job"] == job
        monitor = find(docs, "ServiceMonitor", f"mlplatform-{component}")
        assert monitor["spec"]["jobLabel"] == "mlplatform.io/job"
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["spec"]["selector"].items()
        assert monitor["spec"]["endpoints"][0]["port"] == port
        assert {p["name"] for p in service["spec"]["ports"]} == {port}
    assert 'up{job="mlplatform-monitor"}' in (ROOT / "monitoring" / "rules" / "mlplatform.rules.yaml").read_text()


def test_the_prometheus_rule_is_the_rules_file(render) -> None:
    rule = find(objects(render("production", True)), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((ROOT / "monitoring" / "rules" / "mlplatform.rules.yaml").read_text())
    assert "{{ $labels.model_name }}" in json.dumps(rule["spec"])  # alert templates are not eaten by helm


def test_kind_labels_rules_and_monitors_for_kube_prometheus_stack(render) -> None:
    docs = objects(render("kind", True))
    for d in docs:
        if d["kind"] in MONITORING_KINDS:
            assert d["metadata"]["labels"]["release"] == "kube-prometheus-stack", d["metadata"]["name"]


def test_one_dashboard_config_map_per_dashboard_with_the_grafana_sidecar_label(render) -> None:
    maps = {
        d["metadata"]["name"]: d
        for d in objects(render("kind", False))
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("mlplatform-dashboard-")
    }
    files = sorted((ROOT / "monitoring" / "dashboards").glob("*.json"))
    assert set(maps) == {f"mlplatform-dashboard-{f.stem}" for f in files}
    for f in files:
        cm = maps[f"mlplatform-dashboard-{f.stem}"]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"][f.name]) == json.loads(f.read_text())
    moved = objects(kube.helm_template("kind", {"monitoring": {"dashboards": {"namespace": "monitoring"}}}))
    assert {d["metadata"]["namespace"] for d in moved if d["metadata"]["name"].startswith("mlplatform-dashboard-")} == {
        "monitoring"
    }


def test_the_monitor_reads_the_prediction_log_read_only_and_needs_no_api_access(render) -> None:
    docs = objects(render("production", True))
    monitor = find(docs, "Deployment", "mlplatform-monitor")["spec"]["template"]["spec"]
    assert monitor["automountServiceAccountToken"] is False
    (container,) = monitor["containers"]
    assert container["command"] == ["python", "-m", "mlplatform.monitoring.exporter"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "prediction-log")
    assert mount["readOnly"] is True
    volume = next(v for v in monitor["volumes"] if v["name"] == "prediction-log")
    transformer = find(docs, "InferenceService")["spec"]["predictor"]  # collocated: the predictor pods write it
    written = next(v for v in transformer["volumes"] if v["name"] == "prediction-log")
    assert volume["persistentVolumeClaim"]["claimName"] == written["persistentVolumeClaim"]["claimName"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLPLATFORM_MONITOR_PREDICTION_LOG_DIR"] == mount["mountPath"]
    assert env["MLPLATFORM_MLFLOW_TRACKING_URI"].startswith("http://mlplatform-mlflow.")
    # Least privilege: the only Roles are the pipeline runner's (its InferenceService, and its TrainJobs for the
    # distributed train task); none binds the monitor; no cluster-wide RBAC at all.
    assert _names(docs, "Role") == {"mlplatform-pipeline-runner", "mlplatform-distributed-training"}
    monitor_account = monitor.get("serviceAccountName", "")
    assert not [
        b for b in docs if b["kind"] == "RoleBinding" and any(s["name"] == monitor_account for s in b["subjects"])
    ]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_the_webhook_creates_kfp_runs_with_the_token_from_a_secret(render) -> None:
    docs = objects(render("production", True))
    pod = find(docs, "Deployment", "mlplatform-webhook")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "mlplatform.feedback.webhook"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLPLATFORM_WEBHOOK_BACKEND"]["value"] == "kfp"
    assert env["MLPLATFORM_WEBHOOK_KFP_HOST"]["value"] == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    assert json.loads(env["MLPLATFORM_WEBHOOK_RETRAIN_ALERTNAMES"]["value"]) == [
        "MlplatformFeatureDrift",
        "MlplatformScoreDrift",
        "MlplatformQualityDrop",
    ]
    assert env["MLPLATFORM_WEBHOOK_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "mlplatform-webhook-token"


def test_monitor_and_webhook_admit_only_the_monitoring_namespace_and_the_helm_test_pod(render) -> None:
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    helm_test = {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "mlplatform",
                "app.kubernetes.io/instance": "mlplatform",
                "app.kubernetes.io/component": "test",
            }
        }
    }
    docs = objects(render("production", True))
    test_pod = find(docs, "Pod", "test-endpoints")["metadata"]["labels"]
    assert helm_test["podSelector"]["matchLabels"].items() <= test_pod.items()
    without_tests = objects(kube.helm_template("production", kube.WITH_MODEL, {"tests": {"enabled": False}}))
    for component, port in (("monitor", 9108), ("webhook", 9109)):
        (rule,) = find(docs, "NetworkPolicy", f"mlplatform-{component}")["spec"]["ingress"]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
        assert rule["from"] == [prometheus, helm_test]
        (rule,) = find(without_tests, "NetworkPolicy", f"mlplatform-{component}")["spec"]["ingress"]
        assert rule["from"] == [prometheus]


def test_the_monitor_waits_for_the_inference_service_and_needs_a_persistent_prediction_log(render) -> None:
    without_model = objects(render("kind", False))
    assert "mlplatform-webhook" in _names(without_model, "Deployment")
    assert "mlplatform-monitor" not in _names(without_model, "Deployment")
    with pytest.raises(AssertionError, match="fraudDetector.predictionLog.persistence.enabled=true"):
        kube.helm("template", "default", kube.WITH_MODEL, {"monitoring": {"enabled": True}})


def test_the_pdb_rule_holds_for_the_singletons(render) -> None:
    """Monitor and webhook are single replicas by design (in-memory dedup state): no PodDisruptionBudget."""
    docs = objects(render("production", True))
    assert find(docs, "Deployment", "mlplatform-webhook")["spec"]["replicas"] == 1
    assert not {"mlplatform-monitor", "mlplatform-webhook"} & _names(docs, "PodDisruptionBudget")
