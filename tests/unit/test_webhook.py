"""The Alertmanager webhook receiver: payload validation, de-duplication and cooldown, the trigger of the run.

Runs are started by a stub launcher (a function on a thread) here; the KFP backend is a stand-in client object
(no Kubeflow Pipelines API server can run here). The real chain Prometheus -> Alertmanager -> webhook is in
tests/integration/test_alert_chain.py.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from typer.testing import CliRunner

from mlplatform.errors import ConfigError
from mlplatform.feedback.launchers import FunctionLauncher, KfpLauncher, LocalLauncher
from mlplatform.feedback.webhook import Retrainer, WebhookSettings, create_app, parse_payload
from mlplatform.params import PipelineParams, trigger_tags
from mlplatform.settings import PlatformSettings

DRIFT = "MlplatformFeatureDrift"


def alert(name: str = DRIFT, fingerprint: str = "a1b2c3", status: str = "firing", model: str = "fraud-detector"):
    return {
        "status": status,
        "labels": {"alertname": name, "model_name": model, "model_version": "3", "feature": "amount"},
        "annotations": {"summary": "drift"},
        "startsAt": "2026-01-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    """A notification as Alertmanager 0.25 sends it (webhook payload version 4)."""
    return {
        "version": "4",
        "groupKey": '{}:{alertname="MlplatformFeatureDrift"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "mlplatform-webhook",
        "groupLabels": {"alertname": DRIFT},
        "commonLabels": {"alertname": DRIFT},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts) or [alert()],
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Stub:
    """A retraining 'pipeline' that records its parameters and finishes when told to."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[PipelineParams] = []
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, params: PipelineParams) -> None:
        self.calls.append(params)
        assert self.release.wait(10), "the test never released the run"
        if self.fail:
            raise RuntimeError("training failed")


def make(stub: Stub, **settings: Any) -> tuple[Retrainer, Clock]:
    clock = Clock()
    retrainer = Retrainer(WebhookSettings(cooldown_seconds=3600, **settings), FunctionLauncher(stub), clock=clock)
    return retrainer, clock


def samples(retrainer: Retrainer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    text = generate_latest(retrainer.metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def count(retrainer: Retrainer, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return samples(retrainer).get(key, 0.0)


def wait_calls(stub: Stub, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(stub.calls) < n:
        assert time.monotonic() < deadline, f"{len(stub.calls)} runs started, expected {n}"
        time.sleep(0.01)


# --- payload validation


def test_a_real_alertmanager_payload_parses() -> None:
    parsed = parse_payload(json.dumps(payload()).encode())
    assert parsed.alerts[0].alertname == DRIFT and parsed.alerts[0].fingerprint == "a1b2c3"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.pop("alerts"), "alerts: Field required"),
        (lambda p: p.update(alerts=[]), "alerts: List should have at least 1 item"),
        (lambda p: p.update(version="3"), "version: Input should be '4'"),
        (lambda p: p["alerts"][0]["labels"].pop("alertname"), "alerts.0.labels: Value error, labels.alertname"),
        (lambda p: p["alerts"][0].update(status="pending"), "alerts.0.status"),
        (lambda p: p["alerts"][0].pop("fingerprint"), "alerts.0.fingerprint: Field required"),
        (lambda p: p["alerts"][0].update(startsAt="yesterday"), "alerts.0.startsAt"),
        (lambda p: p.pop("groupKey"), "groupKey: Field required"),
    ],
)
def test_an_invalid_payload_is_answered_400_naming_the_field(mutate, field: str) -> None:
    body = copy.deepcopy(payload())
    mutate(body)
    retrainer, _ = make(Stub())
    with TestClient(create_app(retrainer, retrainer.settings)) as client:
        response = client.post("/alerts", json=body)
    assert response.status_code == 400
    assert field in response.json()["error"]
    assert count(retrainer, "mlplatform_webhook_notifications_total", outcome="invalid") == 1


def test_a_body_that_is_not_json_is_answered_400() -> None:
    retrainer, _ = make(Stub())
    with TestClient(create_app(retrainer, retrainer.settings)) as client:
        response = client.post("/alerts", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "not JSON" in response.json()["error"]


# --- the trigger logic


def test_a_firing_drift_alert_starts_one_run_tagged_with_the_alert() -> None:
    stub = Stub()
    retrainer, _ = make(stub, pipeline_params={"n_transactions": 5000})
    (decision,) = retrainer.handle(parse_payload(json.dumps(payload()).encode()))
    assert decision.action == "started"
    wait_calls(stub, 1)
    params = stub.calls[0]
    assert params.n_transactions == 5000
    assert params.trigger == f"alert:{DRIFT}@a1b2c3"
    assert trigger_tags(params.trigger) == {"trigger": f"alert:{DRIFT}", "trigger_fingerprint": "a1b2c3"}
    stub.release.set()
    assert retrainer.wait_idle(10)
    assert count(retrainer, "mlplatform_retraining_runs_total", trigger=f"alert:{DRIFT}", outcome="started") == 1
    assert count(retrainer, "mlplatform_retraining_runs_total", trigger=f"alert:{DRIFT}", outcome="succeeded") == 1
    retrainer.close()


def test_alerts_during_a_run_and_within_the_cooldown_start_nothing_and_are_counted() -> None:
    stub = Stub()
    retrainer, clock = make(stub)
    first = retrainer.handle(parse_payload(json.dumps(payload(alert(fingerprint="f1"))).encode()))
    assert [d.action for d in first] == ["started"]
    # the same alert again (Alertmanager repeats) and another feature's drift while the run is active
    again = retrainer.handle(
        parse_payload(json.dumps(payload(alert(fingerprint="f1"), alert(fingerprint="f2"))).encode())
    )
    assert [d.action for d in again] == ["deduplicated_active", "deduplicated_active"]
    stub.release.set()
    assert retrainer.wait_idle(10)
    clock.now += 1800  # half the cooldown
    later = retrainer.handle(parse_payload(json.dumps(payload(alert(fingerprint="f3"))).encode()))
    assert [d.action for d in later] == ["deduplicated_cooldown"]
    clock.now += 1801  # past the cooldown
    after = retrainer.handle(parse_payload(json.dumps(payload(alert(fingerprint="f3"))).encode()))
    assert [d.action for d in after] == ["started"]
    assert retrainer.wait_idle(10)
    assert len(stub.calls) == 2
    assert count(retrainer, "mlplatform_webhook_alerts_total", alertname=DRIFT, status="firing", action="started") == 2
    dedup = {"alertname": DRIFT, "status": "firing"}
    assert count(retrainer, "mlplatform_webhook_alerts_total", **dedup, action="deduplicated_active") == 2
    assert count(retrainer, "mlplatform_webhook_alerts_total", **dedup, action="deduplicated_cooldown") == 1
    retrainer.close()


def test_each_model_has_its_own_run_and_cooldown() -> None:
    stub = Stub()
    retrainer, _ = make(stub)
    decisions = retrainer.handle(
        parse_payload(json.dumps(payload(alert(model="fraud-detector"), alert(model="other-model"))).encode())
    )
    assert [d.action for d in decisions] == ["started", "started"]
    stub.release.set()
    assert retrainer.wait_idle(10)
    retrainer.close()


def test_resolved_and_non_retraining_alerts_are_ignored() -> None:
    stub = Stub()
    retrainer, _ = make(stub)
    decisions = retrainer.handle(
        parse_payload(
            json.dumps(
                payload(alert(status="resolved"), alert(name="MlplatformHighErrorRate", fingerprint="e1"))
            ).encode()
        )
    )
    assert [d.action for d in decisions] == ["ignored", "ignored"]
    assert not stub.calls and not retrainer.active_runs()
    assert (
        count(retrainer, "mlplatform_webhook_alerts_total", alertname="other", status="firing", action="ignored") == 1
    )
    retrainer.close()


def test_a_failed_run_is_counted_and_a_failed_start_does_not_hold_the_cooldown() -> None:
    stub = Stub(fail=True)
    stub.release.set()
    retrainer, _ = make(stub)
    retrainer.handle(parse_payload(json.dumps(payload()).encode()))
    assert retrainer.wait_idle(10)
    assert count(retrainer, "mlplatform_retraining_runs_total", trigger=f"alert:{DRIFT}", outcome="failed") == 1
    retrainer.close()

    class Unreachable:
        def launch(self, params: PipelineParams, run_name: str):
            raise ConnectionError("KFP API unreachable")

    retrainer = Retrainer(WebhookSettings(cooldown_seconds=3600), Unreachable(), clock=Clock())
    retrainer.handle(parse_payload(json.dumps(payload()).encode()))
    assert retrainer.wait_idle(10)
    retry = retrainer.handle(parse_payload(json.dumps(payload()).encode()))
    assert [d.action for d in retry] == ["started"]  # not deduplicated_cooldown: nothing ran
    retrainer.wait_idle(10)
    assert count(retrainer, "mlplatform_retraining_runs_total", trigger=f"alert:{DRIFT}", outcome="failed") == 2
    retrainer.close()


def test_the_handler_answers_while_the_launch_is_still_blocked() -> None:
    gate = threading.Event()

    class Slow:
        def launch(self, params: PipelineParams, run_name: str):
            gate.wait(10)  # a KFP API that takes its time
            return SimpleNamespace(run_id=run_name, state=lambda: "succeeded")

    retrainer = Retrainer(WebhookSettings(), Slow(), clock=Clock())
    with TestClient(create_app(retrainer, retrainer.settings)) as client:
        started = time.monotonic()
        response = client.post("/alerts", json=payload())
        elapsed = time.monotonic() - started
        assert response.status_code == 200 and response.json()["decisions"][0]["action"] == "started"
        assert not gate.is_set() and elapsed < 5
        assert client.get("/healthz").json()["active_runs"]
        gate.set()
        assert retrainer.wait_idle(10)


# --- HTTP: auth, health, metrics


def test_a_token_is_required_when_configured_and_health_and_metrics_stay_open() -> None:
    retrainer = Retrainer(WebhookSettings(auth_token="s3cret"), FunctionLauncher(lambda p: None), clock=Clock())
    with TestClient(create_app(retrainer, retrainer.settings)) as client:
        assert client.post("/alerts", json=payload()).status_code == 401
        bad = client.post("/alerts", json=payload(), headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401
        ok = client.post("/alerts", json=payload(), headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert client.get("/healthz").json()["status"] == "ok"
        metrics = client.get("/metrics").text
    families = {f.name for f in text_string_to_metric_families(metrics)}
    assert {
        "mlplatform_webhook_alerts",
        "mlplatform_webhook_notifications",
        "mlplatform_retraining_runs",
        "mlplatform_retraining_active_runs",
        "mlplatform_retraining_last_trigger_timestamp_seconds",
    } <= families


# --- settings and backends


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPLATFORM_WEBHOOK_RETRAIN_ALERTNAMES", '["MlplatformQualityDrop"]')
    monkeypatch.setenv("MLPLATFORM_WEBHOOK_PIPELINE_PARAMS", '{"n_transactions": 20000, "max_epochs": 3}')
    monkeypatch.setenv("MLPLATFORM_WEBHOOK_COOLDOWN_SECONDS", "60")
    settings = WebhookSettings()
    assert settings.retrain_alertnames == ["MlplatformQualityDrop"] and settings.cooldown_seconds == 60
    assert settings.pipeline_params == {"n_transactions": 20000, "max_epochs": 3}


def test_bad_settings_name_what_to_fix() -> None:
    with pytest.raises(ValidationError, match="n_transactions"):
        WebhookSettings(pipeline_params={"n_transactions": 5})
    with pytest.raises(ValidationError, match="trigger is set per run"):
        WebhookSettings(pipeline_params={"trigger": "x"})
    with pytest.raises(ValidationError, match="backend"):
        WebhookSettings(backend="argo")
    with pytest.raises(ConfigError, match="MLPLATFORM_WEBHOOK_KFP_HOST"):
        WebhookSettings(backend="kfp").check()


def test_the_local_backend_runs_the_local_pipeline_with_the_trigger(tmp_path: Path) -> None:
    launcher = LocalLauncher(PlatformSettings(work_dir=tmp_path))
    cmd = launcher.command(PipelineParams(n_transactions=5000, trigger=f"alert:{DRIFT}@a1"))
    assert cmd[1:5] == ["-m", "mlplatform.cli", "run", "--no-serve"]
    assert cmd[cmd.index("--work-dir") + 1] == str(tmp_path.resolve())
    assert cmd[cmd.index("--trigger") + 1] == f"alert:{DRIFT}@a1"
    assert cmd[cmd.index("--n-transactions") + 1] == "5000"
    assert "--source-path" not in cmd  # empty: the generator is used


class FakeKfpClient:
    """Stand-in for kfp.Client (the KFP backend cannot run here): records calls, reports run states."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.recurring: list[dict[str, Any]] = []
        self.state = "RUNNING"

    def create_run_from_pipeline_package(self, pipeline_file: str, **kwargs: Any) -> Any:
        self.runs.append({"pipeline_file": pipeline_file, **kwargs})
        return SimpleNamespace(run_id=f"run-{len(self.runs)}")

    def get_run(self, run_id: str) -> Any:
        return SimpleNamespace(run_id=run_id, state=self.state)

    def create_experiment(self, name: str, **kwargs: Any) -> Any:
        return SimpleNamespace(experiment_id=f"exp-{name}")

    def create_recurring_run(self, **kwargs: Any) -> Any:
        self.recurring.append(kwargs)
        return SimpleNamespace(recurring_run_id="rr-1")


def test_the_kfp_backend_creates_a_run_with_the_trigger_and_follows_its_state(tmp_path: Path) -> None:
    package = tmp_path / "pipeline.yaml"
    package.write_text("{}")
    client = FakeKfpClient()
    launcher = KfpLauncher("http://kfp:8888", "fraud-detection", package, client=client)
    retrainer = Retrainer(WebhookSettings(backend="kfp", kfp_host="http://kfp:8888"), launcher, clock=Clock())
    retrainer.handle(parse_payload(json.dumps(payload()).encode()))
    deadline = time.monotonic() + 10
    while not client.runs:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (run,) = client.runs
    assert run["pipeline_file"] == str(package) and run["experiment_name"] == "fraud-detection"
    assert run["arguments"]["trigger"] == f"alert:{DRIFT}@a1b2c3"
    assert run["run_name"].startswith("retrain-mlplatformfeaturedrift-")
    retrainer.poll()
    assert retrainer.active_runs()  # RUNNING
    client.state = "SUCCEEDED"
    assert retrainer.wait_idle(5)
    assert count(retrainer, "mlplatform_retraining_runs_total", trigger=f"alert:{DRIFT}", outcome="succeeded") == 1
    retrainer.close()


def test_schedule_creates_a_recurring_run_with_trigger_schedule(tmp_path: Path, monkeypatch) -> None:
    import kfp

    from mlplatform.cli import app

    client = FakeKfpClient()
    monkeypatch.setattr(kfp, "Client", lambda host: client)
    package = tmp_path / "pipeline.yaml"
    package.write_text("{}")
    args = ["pipeline", "schedule", "--host", "http://kfp:8888", "--package", str(package)]
    result = CliRunner().invoke(app, [*args, "--cron", "0 0 3 * * *", "--n-transactions", "20000"])
    assert result.exit_code == 0, result.output
    (recurring,) = client.recurring
    assert recurring["cron_expression"] == "0 0 3 * * *" and recurring["experiment_id"] == "exp-fraud-detection"
    assert recurring["params"]["trigger"] == "schedule" and recurring["params"]["n_transactions"] == 20000
    assert recurring["pipeline_package_path"] == str(package) and recurring["max_concurrency"] == 1
    assert '"recurring_run_id": "rr-1"' in result.stdout

    bad = CliRunner().invoke(app, [*args, "--cron", "0 3 * * *"])
    assert bad.exit_code == 2 and "six" in bad.output
