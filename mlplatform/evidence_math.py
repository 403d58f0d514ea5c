"""Step evidence from two counter snapshots: the arithmetic both evidence sources share (no I/O here)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mlplatform.canary import StepEvidence
from mlplatform.stats import histogram_quantile

#: Quantile of the latency check.
LATENCY_QUANTILE = 0.99


@dataclass(frozen=True)
class Snapshot:
    """One side's cumulative counters at one instant (summed over its processes).

    Attributes:
        requests: Requests answered, every outcome.
        errors: Requests answered with a server error.
        fallbacks: Scores replaced by the fallback.
        latency: Cumulative latency histogram: upper bound `le` -> count.
        scores: Cumulative score histogram: upper bound `le` -> count.
    """

    requests: float = 0.0
    errors: float = 0.0
    fallbacks: float = 0.0
    latency: dict[float, float] = field(default_factory=dict)
    scores: dict[float, float] = field(default_factory=dict)

    def values(self) -> list[float]:
        return [self.requests, self.errors, self.fallbacks, *self.latency.values(), *self.scores.values()]


def was_reset(before: Snapshot, after: Snapshot) -> bool:
    """Whether a counter went down between the snapshots (a process restarted or left)."""
    if any(
        a < b
        for a, b in zip(
            (after.requests, after.errors, after.fallbacks),
            (before.requests, before.errors, before.fallbacks),
            strict=True,
        )
    ):
        return True
    return any(after.latency.get(le, 0.0) < v for le, v in before.latency.items()) or any(
        after.scores.get(le, 0.0) < v for le, v in before.scores.items()
    )


def between(before: Snapshot, after: Snapshot) -> StepEvidence:
    """What happened between two snapshots of one side (`after` taken later; not reset in between)."""

    def diff(a: dict[float, float], b: dict[float, float]) -> list[tuple[float, float]]:
        return sorted((le, v - b.get(le, 0.0)) for le, v in a.items())

    scores = diff(after.scores, before.scores)
    latency = diff(after.latency, before.latency)
    return StepEvidence(
        requests=after.requests - before.requests,
        errors=after.errors - before.errors,
        p99_seconds=histogram_quantile(LATENCY_QUANTILE, latency),
        fallbacks=after.fallbacks - before.fallbacks,
        score_buckets=tuple(scores) if scores and scores[-1][0] == math.inf and scores[-1][1] > 0 else (),
        latency_buckets=tuple(latency) if latency and latency[-1][0] == math.inf and latency[-1][1] > 0 else (),
    )
