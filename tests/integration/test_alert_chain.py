"""The real alert chain: Prometheus evaluates our rules on a scraped gauge -> Alertmanager -> the webhook receiver.

Real Prometheus and Alertmanager processes (Debian packages), the receiver's real HTTP app under uvicorn, and
the project's rules file with only the `for` durations capped at 1 s (mlplatform.local.prometheus.shortened_rules). The
retraining run itself is a stub function (a real local pipeline run takes minutes on this machine); the run's
trigger parameter is checked, and tests/unit/test_webhook.py and the register step cover the rest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from mlplatform.feedback.launchers import FunctionLauncher
from mlplatform.feedback.webhook import Retrainer, WebhookSettings, create_app
from mlplatform.local.prometheus import LocalAlertmanager, LocalPrometheus, shortened_rules
from mlplatform.params import PipelineParams

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "monitoring" / "rules" / "mlplatform.rules.yaml"
TOKEN = "chain-test-token"
MODEL = {"model_name": "fraud-detector", "model_version": "3"}


def _wait(predicate: Callable[[], object], timeout_seconds: float, what: str) -> object:
    deadline = time.monotonic() + timeout_seconds
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout_seconds} s waiting for {what}"
        time.sleep(0.1)
    return result


@pytest.fixture
def drift_gauge(port_finder: Callable[[], int]) -> Iterator[tuple[str, Gauge]]:
    """A /metrics server exporting mlplatform_drift_psi as the monitor does."""
    registry = CollectorRegistry()
    gauge = Gauge(
        "mlplatform_drift_psi", "PSI per feature.", ["model_name", "model_version", "feature"], registry=registry
    )
    gauge.labels(**MODEL, feature="amount").set(0.05)
    port = port_finder()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{port}", gauge
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def webhook(port_finder: Callable[[], int]) -> Iterator[tuple[str, Retrainer, list[PipelineParams]]]:
    """The receiver's app under uvicorn on a free port, with a stub pipeline that records its parameters."""
    started: list[PipelineParams] = []
    settings = WebhookSettings(cooldown_seconds=3600, auth_token=TOKEN, run_poll_interval_seconds=0.2)
    retrainer = Retrainer(settings, FunctionLauncher(started.append))
    port = port_finder()
    server = uvicorn.Server(
        uvicorn.Config(create_app(retrainer, settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait(lambda: server.started, 30, "uvicorn to start")
    yield f"http://127.0.0.1:{port}/alerts", retrainer, started
    server.should_exit = True
    thread.join(timeout=10)


def test_a_drift_alert_travels_from_prometheus_through_alertmanager_to_a_retraining_run(
    tmp_path: Path, drift_gauge: tuple[str, Gauge], webhook: tuple[str, Retrainer, list[PipelineParams]]
) -> None:
    address, gauge = drift_gauge
    url, retrainer, started = webhook
    rules = shortened_rules(RULES, tmp_path / "rules" / "mlplatform.rules.yaml", max_for_seconds=1)
    with (
        LocalAlertmanager(tmp_path / "am", [url], bearer_token=TOKEN) as am,
        LocalPrometheus(tmp_path / "prom", rule_files=[rules], alertmanager_url=am.url) as prom,
    ):
        prom.set_targets("mlplatform-monitor", [address])
        prom.wait_scraped("mlplatform-monitor", timeout_seconds=30)
        # Not firing below the threshold: wait for an evaluation of the rules after the first scrape.
        scraped_at = time.time()
        _wait(
            lambda: all(_unix(g["lastEvaluation"]) > scraped_at + 2 for g in prom.rule_groups()),
            30,
            "the rules to be evaluated on scraped data",
        )
        assert not [a for a in prom.alerts() if a["labels"]["alertname"] == "MlplatformFeatureDrift"]

        onset = time.monotonic()
        gauge.labels(**MODEL, feature="amount").set(0.4)
        _wait(lambda: started, 60, "the webhook to start a retraining run")
        detection_seconds = time.monotonic() - onset

        (params,) = started
        fingerprints = {a["fingerprint"] for a in am.alerts() if a["labels"]["alertname"] == "MlplatformFeatureDrift"}
        assert params.trigger.startswith("alert:MlplatformFeatureDrift@")
        assert params.trigger.split("@")[1] in fingerprints
        (decision,) = [d for d in retrainer.history if d.action == "started"]
        assert decision.model_name == "fraud-detector"

        # A second feature drifts while the first run's cooldown holds: Alertmanager notifies, nothing starts.
        gauge.labels(**MODEL, feature="merchant_fraud_rate_30d").set(0.5)
        _wait(
            lambda: any(d.action == "deduplicated_cooldown" for d in retrainer.history),
            60,
            "the second drift alert to reach the webhook",
        )
        assert len(started) == 1
    print(f"drift onset -> retraining run started: {detection_seconds:.1f} s (evaluation 1 s, for capped at 1 s)")


def _unix(iso: str) -> float:
    """Unix seconds (whole) of an RFC 3339 UTC time as Prometheus writes it (nanoseconds, Z)."""
    return datetime.fromisoformat(iso[:19]).replace(tzinfo=UTC).timestamp()
