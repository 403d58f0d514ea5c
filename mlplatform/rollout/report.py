"""The rollout report: what each traffic step measured and decided, as JSON and as text."""

from __future__ import annotations

import enum
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlplatform.rollout.analysis import Check, StepEvidence


class Outcome(enum.StrEnum):
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _evidence_summary(ev: StepEvidence | None) -> dict[str, Any] | None:
    if ev is None:
        return None
    return {
        "requests": round(ev.requests, 1),
        "errors": round(ev.errors, 1),
        "error_rate": None if math.isnan(ev.error_rate) else round(ev.error_rate, 5),
        "p99_seconds": None if ev.p99_seconds is None else round(ev.p99_seconds, 5),
        "fallbacks": round(ev.fallbacks, 1),
        "scores": round(ev.scores, 1),
    }


@dataclass
class StepRecord:
    """One traffic step: how long it ran, what was measured, what was decided.

    Attributes:
        percent: Canary share of the step.
        started_at: UTC time the split was in force.
        decision: promote_step, rollback, inconclusive (no verdict before the deadline) or manual.
        duration_seconds: From the split in force to the decision.
        analyses: Analyses run.
        checks: The final verdict's checks (name, status, measured, allowed, detail).
        canary: Evidence summary of the canary side at the decision.
        stable: Evidence summary of the stable side at the decision.
        waits: Distinct reasons the step had to wait.
    """

    percent: int
    started_at: str
    decision: str = ""
    duration_seconds: float = 0.0
    analyses: int = 0
    checks: list[dict[str, Any]] = field(default_factory=list)
    canary: dict[str, Any] | None = None
    stable: dict[str, Any] | None = None
    waits: list[str] = field(default_factory=list)


@dataclass
class RolloutReport:
    """The record of one rollout (written as JSON and Markdown, attached to the canary version's run).

    Attributes:
        time_to_detect_seconds: Rolled back: from the canary's first traffic to the rollback decision.
        rollback_seconds: Rolled back: from the decision until the stable version serves all traffic again.
        restore_seconds: time_to_detect + rollback: the time to restore service (MTTR) of this incident.
        alias_moves: The registry alias moves that recorded the outcome (e.g. "champion -> 2").
        alias_moves_by: The registry identity that made them (also tagged on the versions:
            `mlplatform.alias.<alias>.moved_by`).
    """

    rollout_id: str
    model_name: str
    stable_version: str
    canary_version: str
    backend: str
    evidence: str
    steps_percent: list[int]
    settings: dict[str, Any]
    started_at: str
    finished_at: str = ""
    outcome: str = ""
    reason: str = ""
    steps: list[StepRecord] = field(default_factory=list)
    time_to_detect_seconds: float | None = None
    rollback_seconds: float | None = None
    restore_seconds: float | None = None
    duration_seconds: float = 0.0
    alias_moves: list[str] = field(default_factory=list)
    alias_moves_by: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def to_markdown(self) -> str:
        """A report for people: outcome, why, and each step's measurements."""
        verb = {"promoted": "PROMOTED", "rolled_back": "ROLLED BACK"}.get(self.outcome, self.outcome.upper())
        lines = [
            f"# Rollout {self.rollout_id}: {self.model_name} version {self.canary_version} {verb}",
            "",
            f"- stable version: {self.stable_version}; canary version: {self.canary_version}",
            f"- backend: {self.backend}; evidence: {self.evidence}; "
            f"steps: {' -> '.join(map(str, self.steps_percent))} %",
            f"- started {self.started_at}, finished {self.finished_at} ({self.duration_seconds:.1f} s)",
            f"- outcome: **{self.outcome}** — {self.reason}",
        ]
        if self.outcome == Outcome.ROLLED_BACK and self.rollback_seconds is not None:
            lines.append(
                f"- time to detect {self.time_to_detect_seconds:.2f} s, rollback {self.rollback_seconds:.3f} s, "
                f"time to restore {self.restore_seconds:.2f} s"
            )
        if self.alias_moves:
            by = f" (by {self.alias_moves_by})" if self.alias_moves_by else ""
            lines.append(f"- registry: {', '.join(self.alias_moves)}{by}")
        for step in self.steps:
            lines += [
                "",
                f"## Step {step.percent} %: {step.decision} after {step.duration_seconds:.1f} s "
                f"({step.analyses} analyses)",
                "",
            ]
            if step.canary is not None:
                lines += [
                    "| side | requests | errors | error rate | p99 (s) | fallbacks |",
                    "|---|---|---|---|---|---|",
                ]
                for side, ev in (("canary", step.canary), ("stable", step.stable)):
                    if ev is not None:
                        lines.append(
                            f"| {side} | {ev['requests']:.0f} | {ev['errors']:.0f} | {ev['error_rate']} | "
                            f"{ev['p99_seconds']} | {ev['fallbacks']:.0f} |"
                        )
                lines.append("")
            if step.checks:
                lines += ["| check | status | measured | allowed | detail |", "|---|---|---|---|---|"]
                for c in step.checks:
                    measured = "" if c["measured"] is None else f"{c['measured']:.4g}"
                    allowed = "" if c["allowed"] is None else f"{c['allowed']:.4g}"
                    lines.append(f"| {c['name']} | {c['status']} | {measured} | {allowed} | {c['detail']} |")
            if step.waits:
                lines += ["", "Waited for: " + "; ".join(step.waits)]
        return "\n".join(lines) + "\n"

    def write(self, directory: Path) -> Path:
        """Write report.json and report.md into `directory`; returns it."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "report.json").write_text(self.to_json())
        (directory / "report.md").write_text(self.to_markdown())
        return directory


def _check_dict(c: Check) -> dict[str, Any]:
    return {"name": c.name, "status": str(c.status), "measured": c.measured, "allowed": c.allowed, "detail": c.detail}
