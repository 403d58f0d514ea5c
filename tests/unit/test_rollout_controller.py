"""The rollout controller's decisions on scripted evidence, with a recording backend and a fake clock.

The backend here only records what the controller asks for; the real backends are tested against a real
API server with KServe's and Knative's controllers (tests/k8s/test_rollout_cluster.py) and real local processes
(tests/e2e/test_rollout_local.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlplatform.monitoring.stats import histogram_quantile
from mlplatform.rollout.analysis import StepEvidence
from mlplatform.rollout.controller import ControlFile, Controller, RolloutError, RolloutMetrics
from mlplatform.rollout.evidence import EvidenceUnavailable, parse_scrape
from mlplatform.rollout.settings import CanarySettings

SCORE_BUCKETS = tuple((round(0.05 * i, 2), 0.0) for i in range(1, 21))


def _scores(counts: dict[float, float]) -> tuple[tuple[float, float], ...]:
    """A cumulative score histogram from per-bucket counts."""
    out, running = [], 0.0
    for le, _ in SCORE_BUCKETS:
        running += counts.get(le, 0.0)
        out.append((le, running))
    return (*out, (math.inf, running))


def good(requests: float = 1000) -> StepEvidence:
    return StepEvidence(
        requests=requests,
        errors=0,
        p99_seconds=0.004,
        fallbacks=0,
        score_buckets=_scores({0.05: requests * 0.9, 0.1: requests * 0.05, 0.9: requests * 0.05}),
    )


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.percent: int | None = None
        self.fail_on: str | None = None

    def start_canary(self, percent: int) -> None:
        self.calls.append(("start_canary", percent))
        self.percent = percent

    def set_canary_percent(self, percent: int) -> None:
        if self.fail_on == "set":
            raise RuntimeError("API server went away")
        self.calls.append(("set", percent))
        self.percent = percent

    def canary_percent(self) -> int | None:
        return self.percent

    def traffic_changed_by(self) -> str | None:
        return None

    def promote(self) -> None:
        self.calls.append(("promote", None))
        self.percent = None

    def rollback(self) -> None:
        self.calls.append(("rollback", None))
        self.percent = 0

    def cleanup(self) -> None:
        self.calls.append(("cleanup", None))

    def evidence(self) -> Any:
        return self.source

    def score_references(self) -> None:
        return None  # the reference-explained score checks are unit-tested in test_canary_decision

    def describe(self) -> dict[str, Any]:
        return {"percent": self.percent}


class ScriptedEvidence:
    """Evidence from a function of (canary percent, analyses so far in the step, side)."""

    def __init__(self, backend: FakeBackend, script: Callable[[int, int, str], StepEvidence]) -> None:
        self.backend, self.script, self.n = backend, script, 0

    def begin_step(self) -> None:
        self.n = 0

    def collect(self, version: str, role: str) -> StepEvidence:
        if role == "canary":
            self.n += 1
        return self.script(self.backend.percent or 0, self.n, role)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


SETTINGS = CanarySettings(
    step_window_seconds=30, analysis_interval_seconds=10, min_requests=100, step_max_wait_seconds=120
)


def _controller(
    tmp_path: Path,
    script: Callable[[int, int, str], StepEvidence],
    settings: CanarySettings = SETTINGS,
    control: ControlFile | None = None,
) -> tuple[Controller, FakeBackend, FakeClock]:
    backend, clock = FakeBackend(), FakeClock()
    backend.source = ScriptedEvidence(backend, script)
    controller = Controller(
        backend, settings, "fraud-detector", "1", "2", tmp_path, control=control, clock=clock, sleep=clock.sleep
    )
    return controller, backend, clock


def test_good_canary_is_promoted_through_every_step_after_each_window(tmp_path: Path) -> None:
    controller, backend, _ = _controller(tmp_path, lambda pct, n, role: good())
    report = controller.run()
    assert backend.calls == [("start_canary", 10), ("set", 25), ("set", 50), ("promote", None), ("cleanup", None)]
    assert report.outcome == "promoted"
    assert [s.decision for s in report.steps] == ["promote_step"] * 3
    assert all(s.duration_seconds >= SETTINGS.step_window_seconds for s in report.steps)
    written = json.loads((controller.report_dir / "report.json").read_text())
    assert written["outcome"] == "promoted" and len(written["steps"]) == 3
    assert "PROMOTED" in (controller.report_dir / "report.md").read_text()


def test_rollback_at_the_first_step_where_the_canary_error_rate_exceeds_the_threshold(tmp_path: Path) -> None:
    def script(pct: int, n: int, role: str) -> StepEvidence:
        ev = good()
        return StepEvidence(ev.requests, 200 if role == "canary" and pct == 25 else 0, 0.004, 0, ev.score_buckets)

    controller, backend, clock = _controller(tmp_path, script)
    report = controller.run()
    assert backend.calls == [("start_canary", 10), ("set", 25), ("rollback", None), ("cleanup", None)]
    assert report.outcome == "rolled_back"
    assert report.steps[-1].percent == 25 and report.steps[-1].decision == "rollback"
    assert "error rate" in report.reason
    # detected at the first analysis of step 25 (10 s in), after step 10 ran its 30 s window
    assert report.time_to_detect_seconds == pytest.approx(40.0)
    assert report.restore_seconds is not None and report.restore_seconds >= report.time_to_detect_seconds


def test_shifted_scores_and_slow_canary_roll_back_at_step_one(tmp_path: Path) -> None:
    def shifted(pct: int, n: int, role: str) -> StepEvidence:
        if role == "stable":
            return good()
        return StepEvidence(1000, 0, 0.004, 0, _scores({0.6: 500, 0.9: 500}))

    def slow(pct: int, n: int, role: str) -> StepEvidence:
        ev = good()
        return StepEvidence(ev.requests, 0, 0.004 * (5 if role == "canary" else 1), 0, ev.score_buckets)

    for script, check in ((shifted, "score PSI"), (slow, "p99 latency")):
        report = _controller(tmp_path, script)[0].run()
        assert report.outcome == "rolled_back" and report.steps[-1].percent == 10
        assert check in report.reason


def test_a_step_without_enough_evidence_waits_and_is_never_promoted(tmp_path: Path) -> None:
    def unavailable(pct: int, n: int, role: str) -> StepEvidence:
        raise EvidenceUnavailable("Prometheus at http://127.0.0.1:1 did not answer")

    controller, backend, clock = _controller(tmp_path, unavailable)
    report = controller.run()
    assert ("promote", None) not in backend.calls and ("set", 25) not in backend.calls
    assert report.outcome == "rolled_back" and report.steps[0].decision == "inconclusive"
    assert clock.t >= SETTINGS.step_max_wait_seconds
    assert "not promoted without evidence" in report.reason and "Prometheus" in report.reason


def test_too_few_requests_waits_until_the_volume_arrives(tmp_path: Path) -> None:
    controller, backend, _ = _controller(tmp_path, lambda pct, n, role: good(requests=40.0 * n))
    report = controller.run()
    assert report.outcome == "promoted"
    first = report.steps[0]
    assert first.analyses >= 3 and any("canary_requests" in w for w in first.waits)


def test_evidence_returning_after_an_outage_lets_the_step_pass(tmp_path: Path) -> None:
    def flaky(pct: int, n: int, role: str) -> StepEvidence:
        if pct == 10 and n <= 2:
            raise EvidenceUnavailable("connection refused")
        return good()

    report = _controller(tmp_path, flaky)[0].run()
    assert report.outcome == "promoted"
    assert any("evidence unavailable" in w for w in report.steps[0].waits)


def test_a_person_can_promote_or_roll_back_a_running_rollout(tmp_path: Path) -> None:
    for action, outcome, calls in (
        ("promote", "promoted", [("start_canary", 10), ("promote", None), ("cleanup", None)]),
        ("rollback", "rolled_back", [("start_canary", 10), ("rollback", None), ("cleanup", None)]),
    ):
        control = ControlFile(tmp_path / action / "current.json")

        def script(pct: int, n: int, role: str, control: ControlFile = control, action: str = action) -> StepEvidence:
            if n == 1:
                control.request(action)
            return good(requests=10)  # never enough on its own

        controller, backend, _ = _controller(tmp_path, script, control=control)
        report = controller.run()
        assert report.outcome == outcome and backend.calls == calls
        assert "requested by a person" in report.reason
        status = control.read()
        assert status["state"] == outcome and "requested_action" not in status


def test_traffic_changed_outside_the_controller_ends_the_rollout(tmp_path: Path) -> None:
    def script(pct: int, n: int, role: str) -> StepEvidence:
        return good(requests=10)

    controller, backend, _ = _controller(tmp_path, script)
    original = backend.canary_percent
    backend.canary_percent = lambda: 0 if backend.calls else original()  # type: ignore[method-assign]
    report = controller.run()
    assert report.outcome == "rolled_back" and "outside the controller" in report.reason


def test_a_crash_mid_rollout_rolls_back_and_reraises(tmp_path: Path) -> None:
    controller, backend, _ = _controller(tmp_path, lambda pct, n, role: good())
    backend.fail_on = "set"
    with pytest.raises(RuntimeError, match="API server"):
        controller.run()
    assert backend.calls[-2:] == [("rollback", None), ("cleanup", None)]
    assert controller.report.outcome == "rolled_back" and "interrupted" in controller.report.reason


def test_rolling_out_the_stable_version_is_refused(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.source = None
    with pytest.raises(RolloutError, match="already the stable version"):
        Controller(backend, SETTINGS, "fraud-detector", "3", "3", tmp_path)


def test_metrics_record_state_traffic_and_outcome(tmp_path: Path) -> None:
    metrics = RolloutMetrics()
    backend, clock = FakeBackend(), FakeClock()
    backend.source = ScriptedEvidence(backend, lambda pct, n, role: good())
    Controller(backend, SETTINGS, "m", "1", "2", tmp_path, metrics=metrics, clock=clock, sleep=clock.sleep).run()
    reg = metrics.registry
    assert reg.get_sample_value("mlplatform_rollouts_total", {"model_name": "m", "outcome": "promoted"}) == 1
    assert (
        reg.get_sample_value("mlplatform_rollout_state", {"model_name": "m", "model_version": "2", "state": "promoted"})
        == 1
    )
    assert (
        reg.get_sample_value(
            "mlplatform_rollout_traffic_percent", {"model_name": "m", "model_version": "2", "role": "stable"}
        )
        == 100
    )
    assert (
        reg.get_sample_value("mlplatform_rollout_step_decisions_total", {"model_name": "m", "decision": "promote_step"})
        >= 3
    )


@pytest.mark.parametrize(
    "steps",
    [[10, 25, 50], [50, 25, 100], [0, 100], []],
    ids=["not-ending-at-100", "decreasing", "zero", "empty"],
)
def test_invalid_traffic_steps_are_refused_naming_the_setting(steps: list[int]) -> None:
    with pytest.raises(ValueError, match="traffic_steps_percent"):
        CanarySettings(traffic_steps_percent=steps)


def test_histogram_quantile_matches_prometheus_interpolation() -> None:
    # 100 observations: 50 in (0, 0.01], 40 in (0.01, 0.02], 10 in (0.02, +Inf)
    buckets = [(0.01, 50.0), (0.02, 90.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.015)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.02)  # in +Inf: the highest finite bound
    assert histogram_quantile(0.99, [(0.01, 0.0), (math.inf, 0.0)]) is None


def test_scrape_parser_reads_labelled_samples() -> None:
    text = (
        "# TYPE mlplatform_inference_requests_total counter\n"
        'mlplatform_inference_requests_total{model_version="2",outcome="ok"} 7.0\n'
    )
    assert parse_scrape(text) == {
        ("mlplatform_inference_requests_total", (("model_version", "2"), ("outcome", "ok"))): 7.0
    }
