"""The feedback loop end to end on real local processes: drifted traffic -> drift gauge -> alert -> Alertmanager ->
webhook -> retraining run -> challenger registered -> canary rollout -> promoted or rolled back.

Real Prometheus and Alertmanager servers (Debian packages) evaluate the project's rules (`for` capped at 1 s
by mlplatform.local.prometheus.shortened_rules); the monitor and the webhook run as their own processes; the champion is
served by real transformer + predictor pairs reading the Feast online store; the webhook starts the real
local pipeline (kfp.local) in a child process. Nothing is mocked. The set-up, the traffic and every wait
live in loop_harness.py (shared with benchmarks/bench_feedback_loop.py); this module asserts each link.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from loop_harness import DRIFT_ALERTS, MODEL, PSI_ALERT, LoopResult, run_feedback_loop

from mlplatform.feedback.webhook import WebhookSettings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> LoopResult:
    missing = [b for b in ("prometheus", "prometheus-alertmanager") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{missing} not installed (make services installs the Debian packages)")
    result = run_feedback_loop(tmp_path_factory.mktemp("feedback-loop"))
    print("\nfeedback loop, seconds from drift onset:", json.dumps(result.timings_seconds))
    print(f"rollout: {result.rollout.get('outcome')} ({result.rollout.get('reason')}); total {result.total_seconds} s")
    return result


def test_undrifted_traffic_fires_no_drift_alert_and_starts_no_run(loop: LoopResult) -> None:
    assert loop.control_predictions >= loop.config["monitor_min_predictions"]  # drift was computed, not skipped
    assert loop.control_max_psi, "no drift gauges in Prometheus during the control"
    assert max(loop.control_max_psi.values()) < PSI_ALERT, loop.control_max_psi
    assert loop.control_max_score_psi < PSI_ALERT
    assert loop.control_alerts == []  # neither pending nor firing
    assert loop.control_runs_started == 0
    assert loop.traffic_statuses["control"].keys() == {200}


def test_drifted_traffic_raises_the_drift_gauge_and_fires_a_retraining_alert(loop: LoopResult) -> None:
    assert max(loop.drift_max_psi.values()) >= PSI_ALERT, loop.drift_max_psi
    labels = loop.alert["labels"]
    assert labels["alertname"] in DRIFT_ALERTS and labels["action"] == "retrain"
    assert labels["model_name"] == MODEL and labels["model_version"] == loop.versions_before[0]
    assert loop.traffic_statuses["drift"].keys() == {200}


def test_alertmanager_routes_the_alert_and_the_webhook_starts_one_run(loop: LoopResult) -> None:
    name = loop.alert["labels"]["alertname"]
    assert loop.alertmanager_fingerprints[name], "Alertmanager does not hold the firing alert"
    assert name in WebhookSettings().retrain_alertnames
    assert loop.webhook_runs == {f"alert:{name}:started": 1.0, f"alert:{name}:succeeded": 1.0}
    assert loop.run_name.startswith(f"retrain-{name.lower()}-")
    assert Path(loop.run_log).is_file()  # the run's output, kept under <work_dir>/retraining/


def test_the_run_registers_a_challenger_tagged_with_the_alert(loop: LoopResult) -> None:
    name = loop.alert["labels"]["alertname"]
    tags = loop.challenger["tags"]
    assert int(loop.challenger["version"]) == int(loop.versions_before[0]) + 1
    assert tags["trigger"] == f"alert:{name}"
    assert tags["trigger_fingerprint"] in loop.alertmanager_fingerprints[name]  # the alert that started the run
    assert loop.run_tags["trigger"] == f"alert:{name}" and loop.run_tags["gate"] == "passed"


def test_the_challenger_is_canaried_and_the_registry_records_the_outcome(loop: LoopResult) -> None:
    report, version = loop.rollout, loop.challenger["version"]
    assert report["outcome"] in ("promoted", "rolled_back"), report
    assert report["stable_version"] == loop.versions_before[0] and report["canary_version"] == version
    decisions = [s["decision"] for s in report["steps"]]
    assert decisions and "inconclusive" not in decisions  # decided on evidence, not on a timeout
    assert loop.challenger["tags"]["rollout.outcome"] == report["outcome"]
    if report["outcome"] == "promoted":
        assert decisions == ["promote_step"] * (len(report["steps_percent"]) - 1)  # the last step (100 %) is promotion
        assert loop.aliases_after == {"champion": version, "challenger": None, "previous": loop.versions_before[0]}
    else:
        assert decisions[-1] == "rollback"
        assert loop.aliases_after["champion"] == loop.versions_before[0]
        assert loop.aliases_after["challenger"] is None


def test_the_links_happen_in_order(loop: LoopResult) -> None:
    t = loop.timings_seconds
    outcome = "new_champion" if loop.rollout["outcome"] == "promoted" else "rolled_back"
    order = ["drift_gauge", "alert_firing", "run_started", "challenger_registered", "rollout_started", outcome]
    assert [t[k] for k in order] == sorted(t[k] for k in order), t
    assert t["drift_gauge"] > 0
