"""Canary rollout: a new version earns production through traffic steps judged on measured evidence.

The controller moves a version from `challenger` to `champion`: it gives the canary the first traffic
step, analyses it (`mlplatform.rollout.analysis.analyse` on evidence from `mlplatform.rollout.evidence`) until the step
has run its window with enough evidence, then advances; a failing check rolls back at once; a step that
never gets enough evidence within its deadline is rolled back as inconclusive — nothing is promoted
without evidence. Backends move the traffic: `mlplatform.rollout.backends.ClusterBackend` patches the
InferenceService, `LocalBackend` drives the local splitter. Every decision is recorded: MLflow aliases
and version tags, a report (Markdown + JSON) beside the run's artifacts, and Prometheus metrics.
"""

from __future__ import annotations

import enum
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from mlplatform import registry
from mlplatform.errors import MlPlatformError
from mlplatform.rollout.analysis import Check, CheckStatus, Decision, ScoreReferences, Verdict, analyse
from mlplatform.rollout.evidence import EvidenceSource, EvidenceUnavailable
from mlplatform.rollout.report import Outcome, RolloutReport, StepRecord, _check_dict, _evidence_summary, _now_iso
from mlplatform.rollout.settings import CanarySettings


class RolloutError(MlPlatformError):
    """A rollout could not be started, driven or recorded."""


class State(enum.StrEnum):
    """What the controller is doing (the `state` label of mlplatform_rollout_state)."""

    ANALYSING = "analysing"  # a step runs and the evidence so far is good
    WAITING = "waiting"  # a step runs without enough evidence yet
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


class Backend(Protocol):
    """Moves the traffic of one rollout: stable version vs canary version."""

    name: str

    def start_canary(self, percent: int) -> None:
        """Put the canary in service at `percent` and wait until the split is in force."""

    def set_canary_percent(self, percent: int) -> None:
        """Change the canary's share and wait until it is in force."""

    def canary_percent(self) -> int | None:
        """The share in force now (None: no canary split, the newest version gets everything)."""

    def traffic_changed_by(self) -> str | None:
        """Who changed the split outside the controller, where the target records it (None: unknown)."""

    def promote(self) -> None:
        """Give the canary all traffic as the new stable version; wait until it is in force."""

    def rollback(self) -> None:
        """Send all traffic back to the stable version; wait until it is in force."""

    def cleanup(self) -> None:
        """Release what the finished rollout no longer needs (after the time to restore was taken)."""

    def evidence(self) -> EvidenceSource:
        """Where the analysis reads its evidence."""

    def score_references(self) -> ScoreReferences | None:
        """Each version's scores on its own training data (None when an artifact has none)."""

    def describe(self) -> dict[str, Any]:
        """Status for people (`mlplatform rollout status`)."""


class RolloutMetrics:
    """The controller's Prometheus metrics (served on `metrics_port` while it runs)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.traffic = Gauge(
            "mlplatform_rollout_traffic_percent",
            "Share of traffic (percent) each version gets, as the rollout controller set it.",
            ("model_name", "model_version", "role"),
            registry=self.registry,
        )
        self.state = Gauge(
            "mlplatform_rollout_state",
            "1 for the rollout's current state (analysing, waiting, promoted, rolled_back).",
            ("model_name", "model_version", "state"),
            registry=self.registry,
        )
        self.rollouts = Counter(
            "mlplatform_rollouts_total",
            "Finished rollouts by outcome (promoted, rolled_back).",
            ("model_name", "outcome"),
            registry=self.registry,
        )
        self.decisions = Counter(
            "mlplatform_rollout_step_decisions_total",
            "Analyses of traffic steps by decision (promote_step, rollback, wait).",
            ("model_name", "decision"),
            registry=self.registry,
        )
        self.last_rollback = Gauge(
            "mlplatform_rollout_last_rollback_seconds",
            "Time to restore of the last rollback: first canary traffic to stable serving everything again.",
            ("model_name",),
            registry=self.registry,
        )

    def set_traffic(self, model_name: str, stable: str, canary: str, canary_percent: int) -> None:
        self.traffic.clear()
        self.traffic.labels(model_name, stable, "stable").set(100 - canary_percent)
        if canary_percent > 0:
            self.traffic.labels(model_name, canary, "canary").set(canary_percent)

    def set_state(self, model_name: str, version: str, state: State) -> None:
        for s in State:
            self.state.labels(model_name, version, str(s)).set(1 if s == state else 0)


class Recorder(Protocol):
    """Where a finished rollout is recorded (the registry)."""

    def record(self, report: RolloutReport, report_dir: Path) -> list[str]:
        """Record the outcome; returns the alias moves done (also set on `report` with who made them)."""


class MlflowRecorder:
    """Records outcomes in the MLflow registry: aliases, version tags, the report as run artifacts.

    Promoted: champion -> canary version, the old champion -> `previous`, `challenger` removed.
    Rolled back: `challenger` removed when it named the canary version; the champion stays.
    """

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def record(self, report: RolloutReport, report_dir: Path) -> list[str]:

        version = report.canary_version
        tags: dict[str, Any] = {
            "rollout.id": report.rollout_id,
            "rollout.outcome": report.outcome,
            "rollout.reason": report.reason[:4000],
            "rollout.finished_at": report.finished_at,
            "rollout.stable_version": report.stable_version,
        }
        for step in report.steps:
            tags[f"rollout.step_{step.percent}.decision"] = step.decision
            for c in step.checks:
                if c["measured"] is not None:
                    tags[f"rollout.step_{step.percent}.{c['name']}"] = f"{c['measured']:.6g}"
        if report.restore_seconds is not None:
            tags["rollout.restore_seconds"] = f"{report.restore_seconds:.3f}"
        if report.outcome == Outcome.PROMOTED:
            moves = registry.promote_champion(self.model_name, version)
        else:
            moves = registry.retire_challenger(self.model_name, version)
        # the report attached to the run names the moves and who made them (the tags on the versions say it too)
        report.alias_moves, report.alias_moves_by = moves, registry.acting_identity()
        report.write(report_dir)
        registry.tag_version(self.model_name, version, tags)
        run_id = registry.get_version(self.model_name, version).run_id
        if run_id:
            registry.log_run_artifacts(run_id, report_dir, f"rollouts/{report.rollout_id}")
        return moves


class Control(Protocol):
    """A channel for people to decide a running rollout (`mlplatform rollout promote|rollback`)."""

    def requested(self) -> str | None:
        """A pending request (promote or rollback), consumed by the call; None without one."""

    def publish(self, status: dict[str, Any]) -> None:
        """Show the controller's current status."""


class ControlFile:
    """The local control channel: a JSON file with the controller's status and a person's request."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def requested(self) -> str | None:
        data = self.read()
        action = data.pop("requested_action", None)
        if action is None:
            return None
        data.pop("requested_at", None)
        self._write(data)
        return action if action in ("promote", "rollback") else None

    def request(self, action: str) -> None:
        """Ask the running controller to promote or roll back (it acts at its next analysis)."""
        if action not in ("promote", "rollback"):
            raise ValueError(f"action must be promote or rollback, got {action!r}")
        self._write({**self.read(), "requested_action": action, "requested_at": _now_iso()})

    def publish(self, status: dict[str, Any]) -> None:
        current = self.read()
        self._write({**status, **{k: current[k] for k in ("requested_action", "requested_at") if k in current}})

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.path)


class Controller:
    """Drives one rollout to promotion or rollback.

    Args:
        backend: Moves the traffic.
        settings: Steps, windows and thresholds.
        model_name: Registered model name.
        stable_version: The version serving now (the champion).
        canary_version: The version being rolled out (the challenger).
        report_root: Folder under which each rollout's report folder is written.
        recorder: Records the outcome (the MLflow registry); None records nothing but the report.
        metrics: The controller's metrics.
        control: Where people can request promote/rollback and see the status.
        log: Progress lines for people.
        clock: Monotonic seconds (tests pass a fake).
        sleep: Waits between analyses (tests pass a fake).
    """

    def __init__(
        self,
        backend: Backend,
        settings: CanarySettings,
        model_name: str,
        stable_version: str,
        canary_version: str,
        report_root: Path,
        *,
        recorder: Recorder | None = None,
        metrics: RolloutMetrics | None = None,
        control: Control | None = None,
        log: Callable[[str], None] = lambda line: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if str(stable_version) == str(canary_version):
            raise RolloutError(f"version {canary_version} is already the stable version; nothing to roll out")
        self.backend = backend
        self._references: ScoreReferences | None = None
        self.settings = settings
        self.model_name = model_name
        self.stable = str(stable_version)
        self.canary = str(canary_version)
        self.report_root = report_root
        self.recorder = recorder
        self.metrics = metrics or RolloutMetrics()
        self.control = control
        self.log = log
        self.clock = clock
        self.sleep = sleep
        self.report = RolloutReport(
            rollout_id=f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}",
            model_name=model_name,
            stable_version=self.stable,
            canary_version=self.canary,
            backend=backend.name,
            evidence=type(backend.evidence()).__name__,
            steps_percent=list(settings.traffic_steps_percent),
            settings=settings.model_dump(mode="json"),
            started_at=_now_iso(),
        )
        self._expected_percent: int | None = None
        self._canary_since: float | None = None
        if control is not None:
            control.requested()  # a request left from an earlier rollout is not meant for this one

    @property
    def report_dir(self) -> Path:
        return self.report_root / self.report.rollout_id

    def _publish(self, state: State, percent: int | None, detail: str = "") -> None:
        self.metrics.set_state(self.model_name, self.canary, state)
        if percent is not None:
            self.metrics.set_traffic(self.model_name, self.stable, self.canary, percent)
        if self.control is not None:
            self.control.publish(
                {
                    "rollout_id": self.report.rollout_id,
                    "model_name": self.model_name,
                    "stable_version": self.stable,
                    "canary_version": self.canary,
                    "state": str(state),
                    "canary_percent": percent,
                    "detail": detail,
                    "updated_at": _now_iso(),
                    "backend": self.backend.describe(),
                }
            )

    def run(self) -> RolloutReport:
        """Roll out: each step below 100 % analysed, then promotion; or rollback at the first failing step."""
        started = self.clock()
        steps = self.settings.traffic_steps_percent
        self.log(f"rollout {self.report.rollout_id}: version {self.canary} vs stable {self.stable}, steps {steps} %")
        try:
            for i, percent in enumerate(steps[:-1]):
                if i == 0:
                    self.backend.start_canary(percent)
                    self._canary_since = self.clock()
                    self._references = self.backend.score_references()
                else:
                    self.backend.set_canary_percent(percent)
                self._expected_percent = percent
                step = self._run_step(percent)
                if step.decision != Decision.PROMOTE_STEP:
                    return self._conclude(step, started)
            self._promote(f"every step passed ({', '.join(f'{s} %' for s in steps[:-1])})", started)
            return self.report
        except BaseException as exc:
            if not self.report.outcome:  # crashed mid-rollout (a bug, Ctrl-C): never leave a canary half in
                self.log(f"rollout interrupted ({type(exc).__name__}: {exc}); rolling back")
                try:
                    self._rollback(f"rollout interrupted: {type(exc).__name__}: {exc}", started, None)
                except Exception as inner:  # noqa: BLE001 - report the original error; this one is logged
                    self.log(f"rollback after interruption failed too: {inner}")
            raise

    def _run_step(self, percent: int) -> StepRecord:
        s = self.settings
        step = StepRecord(percent=percent, started_at=_now_iso())
        self.report.steps.append(step)
        source = self.backend.evidence()
        source.begin_step()
        begun = self.clock()
        self._publish(State.WAITING, percent, f"step {percent} % started")
        self.log(
            f"  step {percent} %: analysing every {s.analysis_interval_seconds:g} s, window {s.step_window_seconds} s"
        )
        while True:
            self.sleep(s.analysis_interval_seconds)
            elapsed = self.clock() - begun
            step.duration_seconds = round(elapsed, 3)
            manual = self._manual_decision()
            if manual is not None:
                step.decision = "manual"
                step.waits.append(manual)
                return step
            verdict = self._analyse(step, source)
            step.analyses += 1
            self.metrics.decisions.labels(self.model_name, str(verdict.decision)).inc()
            step.checks = [_check_dict(c) for c in verdict.checks]
            if verdict.decision == Decision.ROLLBACK:
                step.decision = str(Decision.ROLLBACK)
                self.log(f"  step {percent} %: ROLLBACK after {elapsed:.1f} s: {'; '.join(verdict.reasons)}")
                return step
            if verdict.decision == Decision.PROMOTE_STEP:
                self._publish(State.ANALYSING, percent, "evidence good so far")
                if elapsed >= s.step_window_seconds:
                    step.decision = str(Decision.PROMOTE_STEP)
                    self.log(f"  step {percent} %: passed after {elapsed:.1f} s ({step.analyses} analyses)")
                    return step
            else:
                for reason in verdict.reasons:
                    what = reason.split(":")[0]
                    if not any(w.split(":")[0] == what for w in step.waits):
                        step.waits.append(reason)
                self._publish(State.WAITING, percent, "; ".join(verdict.reasons))
            if elapsed >= s.step_max_wait_seconds:
                step.decision = "inconclusive"
                self.log(f"  step {percent} %: no verdict within {s.step_max_wait_seconds:g} s")
                return step

    def _analyse(self, step: StepRecord, source: EvidenceSource) -> Verdict:
        try:
            canary = source.collect(self.canary, "canary")
            stable = source.collect(self.stable, "stable")
        except EvidenceUnavailable as exc:
            check = Check("evidence", CheckStatus.UNAVAILABLE, None, None, f"evidence unavailable: {exc}")
            return Verdict(Decision.WAIT, (check,))
        step.canary, step.stable = _evidence_summary(canary), _evidence_summary(stable)
        return analyse(canary, stable, self.settings, self._references)

    def _manual_decision(self) -> str | None:
        """A person's decision: through the control channel, or by changing the split outside the controller."""
        requested = self.control.requested() if self.control is not None else None
        if requested is not None:
            return f"{requested} requested by a person (mlplatform rollout {requested})"
        live = self.backend.canary_percent()
        if live != self._expected_percent:
            who = self.backend.traffic_changed_by()
            by = f" by {who}" if who else ""
            return (
                f"traffic changed outside the controller{by}: canary at {live} % instead of {self._expected_percent} %"
            )
        return None

    def _conclude(self, step: StepRecord, started: float) -> RolloutReport:
        """Act on a step that did not pass: a person's decision, or a rollback (failed or inconclusive)."""
        if step.decision == "manual":
            reason = step.waits[-1]
            if reason.startswith("promote"):
                self._promote(reason, started)
                return self.report
            live = self.backend.canary_percent()
            if live is None:  # promoted outside the controller (field removed): record it as promoted
                self._promote(reason, started, already=True)
                return self.report
        elif step.decision == "inconclusive":
            reason = (
                f"step {step.percent} % had no verdict within {self.settings.step_max_wait_seconds:g} s "
                f"({'; '.join(step.waits) or 'no evidence'}); not promoted without evidence"
            )
        else:
            failed = [c["detail"] for c in step.checks if c["status"] == CheckStatus.FAILED]
            reason = f"step {step.percent} % failed: " + "; ".join(failed)
        self._rollback(reason, started, self.clock())
        return self.report

    def _rollback(self, reason: str, started: float, decided: float | None) -> None:
        t0 = self.clock()
        self.backend.rollback()
        t1 = self.clock()
        r = self.report
        r.outcome, r.reason = str(Outcome.ROLLED_BACK), reason
        if decided is not None and self._canary_since is not None:
            r.time_to_detect_seconds = round(decided - self._canary_since, 3)
            r.rollback_seconds = round(t1 - t0, 3)
            r.restore_seconds = round(t1 - self._canary_since, 3)
            self.metrics.last_rollback.labels(self.model_name).set(r.restore_seconds)
        self.log(f"rolled back: {reason}")
        self._cleanup()
        self._finish(State.ROLLED_BACK, 0, started)

    def _promote(self, reason: str, started: float, already: bool = False) -> None:
        if not already:
            self.backend.promote()
            self._cleanup()
        self.report.outcome, self.report.reason = str(Outcome.PROMOTED), reason
        self.log(f"promoted version {self.canary}: {reason}")
        self._finish(State.PROMOTED, 100, started)

    def _cleanup(self) -> None:
        """Release what the decided rollout no longer needs; a failure here changes no traffic, so it is logged."""
        try:
            self.backend.cleanup()
        except Exception as exc:  # noqa: BLE001 - the outcome stands; leftovers are named in the log
            self.log(f"cleanup after the rollout failed (traffic unaffected): {type(exc).__name__}: {exc}")

    def _finish(self, state: State, percent: int, started: float) -> None:
        r = self.report
        r.finished_at = _now_iso()
        r.duration_seconds = round(self.clock() - started, 3)
        self.metrics.rollouts.labels(self.model_name, r.outcome).inc()
        self._publish(state, None, r.reason)
        self.metrics.traffic.clear()
        self.metrics.traffic.labels(self.model_name, self.canary if percent == 100 else self.stable, "stable").set(100)
        r.write(self.report_dir)
        if self.recorder is not None:
            try:
                r.alias_moves = self.recorder.record(r, self.report_dir)
            except Exception as exc:
                r.write(self.report_dir)
                raise RolloutError(
                    f"the rollout {r.outcome} version {self.canary}, but recording it in the registry failed ({exc}); "
                    f"the traffic is already decided — record it with `mlplatform rollout {_verb(r.outcome)} "
                    f"--record-only --version {self.canary}` once the registry answers (report: {self.report_dir})"
                ) from exc
            r.write(self.report_dir)


def _verb(outcome: str) -> str:
    return "promote" if outcome == Outcome.PROMOTED else "rollback"
