"""Every dashboard and alert query parses on a real Prometheus and names metrics our processes really export.

A real Prometheus scrapes (1) the serving metric families (serving.metrics.ServingMetrics, each family with a
sample, served by prometheus_client as the serving processes do) and the stream feature processor's
(mlplatform.features.stream.StreamMetrics), and (2) the webhook receiver's real /metrics
(its FastAPI app under uvicorn). The monitor (mlplatform/monitoring/exporter.py) exports its gauges only after it has
evaluated a window of real predictions, and the rollout controller (mlplatform/rollout/controller.py) only during a
rollout, so their names are checked against the explicit allow-lists below (the names agreed in issue 5),
not against a scrape.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from mlplatform.features.stream import StreamMetrics
from mlplatform.feedback.launchers import FunctionLauncher
from mlplatform.feedback.webhook import Retrainer, WebhookSettings, create_app
from mlplatform.local.prometheus import LocalPrometheus
from mlplatform.monitoring import dashboards, grafana
from serving.metrics import ServingMetrics

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "monitoring" / "rules" / "mlplatform.rules.yaml"
#: Exported by the monitor (mlplatform/monitoring/exporter.py) once a window was evaluated - allow-listed, not scraped.
MONITOR_METRICS = {
    "mlplatform_drift_psi",
    "mlplatform_drift_ks",
    "mlplatform_score_psi",
    "mlplatform_score_ks",
    "mlplatform_feature_missing_rate",
    "mlplatform_feature_skew",
    "mlplatform_quality_precision",
    "mlplatform_quality_recall",
    "mlplatform_quality_pr_auc",
    "mlplatform_quality_labelled_predictions",
    "mlplatform_monitor_window_predictions",
    "mlplatform_model_age_seconds",
    "mlplatform_monitor_last_success_timestamp_seconds",
    "mlplatform_monitor_runs_total",
}
#: Exported by mlplatform/rollout/controller.py (the canary rollout controller) - allow-listed, not scraped.
ROLLOUT_METRICS = {
    "mlplatform_rollout_traffic_percent",
    "mlplatform_rollout_state",
    "mlplatform_rollouts_total",
    "mlplatform_rollout_last_rollback_seconds",
    "mlplatform_rollout_step_decisions_total",
}
METRIC = re.compile(r"\b(mlplatform_[a-z0-9_]+)\b")


def serving_registry(component: str) -> CollectorRegistry:
    """Every serving metric family with at least one sample, as a transformer or a predictor exports them.

    The transformer carries model_version "shared" as in the chart's separate-pods layout (the harder case: a
    collocated transformer carries its revision's version), the predictor the version it serves, so per-version
    panels only find data when they read the predictor's series.
    """
    registry = CollectorRegistry()
    version = "3" if component == "predictor" else "shared"
    m = ServingMetrics("fraud-detector", version, "stable", component, registry=registry)
    m.info("run123")
    m.request("ok")
    m.stage("total" if component == "transformer" else "predict", 0.004)
    m.scores([0.1, 0.7])
    m.fallback("non_finite")
    m.miss("customer")
    m.store_error("timeout")
    m.feature_lookup_seconds.labels(**m.labels).observe(0.001)
    m.log_records.labels(**m.labels).inc()
    m.log_errors.labels(**m.labels).inc()
    m.event_backlog.labels(**m.labels).set(0)  # the transformer's publisher, where Kafka is configured
    m.event_delivery_errors.labels(**m.labels).inc()
    return registry


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory, port_finder: Callable[[], int]) -> Iterator[LocalPrometheus]:
    servers = []
    for component in ("transformer", "predictor"):
        port = port_finder()
        servers.append((port, *start_http_server(port, addr="127.0.0.1", registry=serving_registry(component))))
    stream = CollectorRegistry()  # the stream feature processor's families (mlplatform/features/stream.py)
    stream_metrics = StreamMetrics(stream)
    stream_metrics.push_errors.inc()
    stream_metrics.push_seconds.observe(0.01)
    stream_metrics.freshness.observe(0.3)
    port = port_finder()
    servers.append((port, *start_http_server(port, addr="127.0.0.1", registry=stream)))
    retrainer = Retrainer(WebhookSettings(), FunctionLauncher(lambda p: None))
    webhook_port = port_finder()
    config = uvicorn.Config(create_app(retrainer, retrainer.settings), host="127.0.0.1", port=webhook_port)
    webhook = uvicorn.Server(config)
    webhook_thread = threading.Thread(target=webhook.run, daemon=True)
    webhook_thread.start()
    deadline = time.monotonic() + 30
    while not webhook.started:
        assert time.monotonic() < deadline, "the webhook app did not start"
        time.sleep(0.05)
    with LocalPrometheus(tmp_path_factory.mktemp("prom")) as p:
        p.set_targets("mlplatform-serving", [f"127.0.0.1:{port}" for port, _, _ in servers])
        p.set_targets("mlplatform-webhook", [f"127.0.0.1:{webhook_port}"])
        p.wait_scraped("mlplatform-serving", timeout_seconds=30)
        p.wait_scraped("mlplatform-webhook", timeout_seconds=30)
        yield p
    webhook.should_exit = True
    webhook_thread.join(timeout=10)
    for _, server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def scraped_names(prom: LocalPrometheus) -> set[str]:
    body = httpx.get(prom.url + "/api/v1/label/__name__/values", timeout=10).json()
    return set(body["data"])


def dashboard_queries() -> list[tuple[str, str]]:
    return [
        (f"{name}: {expr[:60]}", expr)
        for name, text in dashboards.render().items()
        for expr in grafana.expressions(json.loads(text))
    ]


def concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced as Grafana would."""
    return expr.replace("$__rate_interval", "1m").replace("$model_name", ".+")


def test_every_dashboard_query_is_accepted_by_prometheus(prom: LocalPrometheus) -> None:
    failures = []
    for where, expr in dashboard_queries():
        response = httpx.get(prom.url + "/api/v1/query", params={"query": concrete(expr)}, timeout=10)
        if response.json().get("status") != "success":
            failures.append(f"{where}: {response.json().get('error')}")
    assert not failures, "\n".join(failures)


def test_every_metric_in_dashboards_and_rules_is_exported(prom: LocalPrometheus) -> None:
    scraped = scraped_names(prom)
    used = {m for _, expr in dashboard_queries() for m in METRIC.findall(expr)}
    groups = yaml.safe_load(RULES.read_text())["groups"]
    used |= {m for g in groups for r in g["rules"] for m in METRIC.findall(r["expr"])}
    unknown = used - scraped - MONITOR_METRICS - ROLLOUT_METRICS
    assert not unknown, f"referenced but exported by none of our processes: {sorted(unknown)}"
    # The scrape really covers the serving and webhook families the dashboards use.
    assert {"mlplatform_inference_stage_seconds_bucket", "mlplatform_retraining_runs_total"} <= scraped


def test_dashboard_queries_return_data_for_the_serving_and_webhook_metrics(prom: LocalPrometheus) -> None:
    """Not only parse: the serving and webhook panels select the scraped series (label names match)."""
    scraped = scraped_names(prom)
    empty = []
    for where, expr in dashboard_queries():
        names = set(METRIC.findall(expr))
        if not names or not names <= scraped or "rate(" in expr or "increase(" in expr:
            continue  # rates need two samples; the monitor's and rollout's series are not scraped here
        if not prom.query(concrete(expr)):
            empty.append(where)
    assert not empty, f"queries that match no scraped series: {empty}"
