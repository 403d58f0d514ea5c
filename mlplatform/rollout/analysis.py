"""Canary analysis without I/O: step evidence (from counter snapshots) judged against the stable version."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlplatform.monitoring.stats import histogram_quantile, ks_of_counts, psi_of_counts
from mlplatform.rollout.settings import CanarySettings


@dataclass(frozen=True)
class StepEvidence:
    """What one side (canary or stable) did during a step's window; counts are Prometheus increases (floats).

    Attributes:
        requests: Inference requests answered, every outcome.
        errors: Requests answered with a server error (outcome error or unavailable).
        p99_seconds: p99 end-to-end latency; None when no latency was observed.
        fallbacks: Scores replaced by the fallback heuristic.
        score_buckets: Cumulative score histogram as Prometheus keeps it: (upper bound `le`, count) pairs in
            increasing order, the last one `inf` (every score); empty when no score was observed.
        precision: Precision on labelled feedback of the window; None without labels.
        recall: Recall on labelled feedback of the window; None without labels.
        latency_buckets: Cumulative latency histogram of the window ((le, count), last `inf`); empty when the
            source gives only p99 (then the relative latency check reads p99).
    """

    requests: float
    errors: float
    p99_seconds: float | None
    fallbacks: float
    score_buckets: tuple[tuple[float, float], ...] = ()
    precision: float | None = None
    latency_buckets: tuple[tuple[float, float], ...] = ()
    recall: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests > 0 else math.nan

    @property
    def scores(self) -> float:
        """Scores observed (the histogram's +Inf bucket)."""
        return self.score_buckets[-1][1] if self.score_buckets else 0.0


class Decision(enum.StrEnum):
    PROMOTE_STEP = "promote_step"  # every check passed on enough evidence: advance to the next traffic step
    ROLLBACK = "rollback"  # a check failed on enough evidence: send all traffic back to stable
    WAIT = "wait"  # not enough evidence yet (too few requests, a metric unavailable): analyse again later


class CheckStatus(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"  # could not be measured: blocks promotion
    SKIPPED = "skipped"  # not configured, or optional evidence (labels) absent: blocks nothing


@dataclass(frozen=True)
class Check:
    """One threshold check: what was measured against what was allowed."""

    name: str
    status: CheckStatus
    measured: float | None
    allowed: float | None
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


@dataclass(frozen=True)
class Verdict:
    """The decision of one analysis step and every check behind it."""

    decision: Decision
    checks: tuple[Check, ...]

    @property
    def reasons(self) -> list[str]:
        """Why: the failed checks for ROLLBACK, the unavailable ones for WAIT, nothing for PROMOTE_STEP."""
        wanted = {Decision.ROLLBACK: CheckStatus.FAILED, Decision.WAIT: CheckStatus.UNAVAILABLE}.get(self.decision)
        return [str(c) for c in self.checks if c.status == wanted]


def _upper(name: str, measured: float | None, allowed: float, what: str, unit: str = "") -> Check:
    """A check that passes when `measured` <= `allowed`; unavailable when it could not be measured."""
    if measured is None or math.isnan(measured):
        return Check(name, CheckStatus.UNAVAILABLE, None, allowed, f"{what} unavailable (allowed <= {allowed:g}{unit})")
    ok = measured <= allowed
    word = "within" if ok else "exceeds"
    return Check(
        name,
        CheckStatus.PASSED if ok else CheckStatus.FAILED,
        measured,
        allowed,
        f"{what} {measured:.4g}{unit} {word} allowed {allowed:.4g}{unit}",
    )


def _lower(name: str, measured: float | None, minimum: float | None, what: str) -> Check:
    """A check that passes when `measured` >= `minimum`; skipped when unset or not measured (optional evidence)."""
    if minimum is None:
        return Check(name, CheckStatus.SKIPPED, measured, None, f"{what}: no minimum configured")
    if measured is None or math.isnan(measured):
        return Check(name, CheckStatus.SKIPPED, None, minimum, f"{what}: no labelled feedback in the window")
    ok = measured >= minimum
    word = "meets" if ok else "below"
    return Check(
        name,
        CheckStatus.PASSED if ok else CheckStatus.FAILED,
        measured,
        minimum,
        f"{what} {measured:.4g} {word} minimum {minimum:.4g}",
    )


def bin_counts(
    canary: Sequence[tuple[float, float]], stable: Sequence[tuple[float, float]]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-bin counts of two cumulative histograms on the bucket bounds they share, or None without two bins.

    A cumulative histogram read at a subset of its bounds is an exact coarser histogram, so versions whose
    buckets differ are still compared, on their common bounds.
    """
    c, s = dict(canary), dict(stable)
    shared = sorted(set(c) & set(s))
    if len(shared) < 2 or shared[-1] != math.inf:
        return None
    cum_c = np.array([c[le] for le in shared])
    cum_s = np.array([s[le] for le in shared])
    return np.diff(cum_c, prepend=0.0), np.diff(cum_s, prepend=0.0)


def pool_bins(canary_bins: np.ndarray, stable_bins: np.ndarray, min_expected: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge adjacent bins, left to right, until each holds `min_expected` stable scores and as many canary scores
    as the stable distribution predicts for the canary's sample size; a short tail joins the last full bin."""
    n_canary, n_stable = float(canary_bins.sum()), float(stable_bins.sum())
    if n_canary <= 0 or n_stable <= 0:
        return canary_bins, stable_bins
    pooled_c: list[float] = []
    pooled_s: list[float] = []
    acc_c = acc_s = 0.0
    for c, st in zip(canary_bins, stable_bins, strict=True):
        acc_c, acc_s = acc_c + c, acc_s + st
        if acc_s >= min_expected and acc_s / n_stable * n_canary >= min_expected:
            pooled_c.append(acc_c)
            pooled_s.append(acc_s)
            acc_c = acc_s = 0.0
    if acc_c or acc_s:
        if pooled_c:
            pooled_c[-1] += acc_c
            pooled_s[-1] += acc_s
        else:
            pooled_c, pooled_s = [acc_c], [acc_s]
    return np.asarray(pooled_c), np.asarray(pooled_s)


#: Pseudo-count added to every pooled bin of both sides before PSI (Jeffreys' prior): without it a bin that a small
#: sample leaves empty by chance weighs ln(expected / 1e-4), several times the chi-square term the noise bound allows
#: for it, and an identical canary was rolled back on that alone.
PSEUDO_COUNT = 0.5


def smoothed_psi(expected_bins: np.ndarray, actual_bins: np.ndarray) -> float:
    """PSI of two pooled histograms (counts) with `PSEUDO_COUNT` added to every bin of both."""
    return psi_of_counts(expected_bins + PSEUDO_COUNT, actual_bins + PSEUDO_COUNT)


def look_alpha(settings: CanarySettings) -> float:
    """Significance level of one score-distribution test in one analysis.

    `distribution_test_alpha` bounds the chance that sampling noise alone rolls back a healthy canary over a whole
    rollout. A rollout looks again and again (every `analysis_interval_seconds` for at least `step_window_seconds`
    at each analysed step) and each look makes two tests (PSI and KS): at a fixed level per test a healthy canary was
    rolled back in several percent of rollouts. The level is split evenly over the tests of a rollout whose steps all
    pass (Bonferroni).
    """
    steps = max(1, sum(1 for p in settings.traffic_steps_percent if p < 100))
    looks = max(1, math.ceil(settings.step_window_seconds / settings.analysis_interval_seconds))
    return settings.distribution_test_alpha / (2 * steps * looks)


def noise_bounds(canary_bins: np.ndarray, stable_bins: np.ndarray, alpha: float) -> tuple[float, float]:
    """What PSI and KS reach by sampling noise alone, at significance `alpha`, for two binned samples.

    Between two samples of one distribution, PSI (a symmetrised chi-square divergence) is asymptotically
    chi-square with k - 1 degrees of freedom scaled by 1/n1 + 1/n2 (k: bins holding any observation);
    KS is below c(alpha) * sqrt((n1 + n2) / (n1 n2)) with c(alpha) = sqrt(-ln(alpha / 2) / 2).
    """
    from scipy.stats import chi2

    n1, n2 = float(canary_bins.sum()), float(stable_bins.sum())
    if n1 <= 0 or n2 <= 0:
        return math.inf, math.inf
    k = int(np.count_nonzero((canary_bins + stable_bins) > 0))
    scale = 1.0 / n1 + 1.0 / n2
    psi_bound = float(chi2.ppf(1.0 - alpha, max(k - 1, 1))) * scale
    ks_bound = math.sqrt(-math.log(alpha / 2.0) / 2.0) * math.sqrt(scale)
    return psi_bound, ks_bound


@dataclass(frozen=True)
class ScoreReferences:
    """What each version scored on its own training data: the `score` entry of its reference statistics
    (mlplatform.monitoring.stats.column_stats: quantile edges, proportions per bin, min, max, count)."""

    canary: Mapping[str, Any]
    stable: Mapping[str, Any]


def reference_counts(reference: Mapping[str, Any], bounds: Sequence[float]) -> np.ndarray | None:
    """Counts a reference distribution puts in the bins of a cumulative histogram with upper `bounds` (the last
    one inf): its CDF, linear between the quantile edges from min to max, times its row count."""
    edges, proportions = reference.get("edges") or [], reference.get("proportions") or []
    lo, hi, n = reference.get("min"), reference.get("max"), reference.get("count") or 0
    if len(edges) < 2 or lo is None or hi is None or n <= 0:
        return None
    xs = np.asarray([lo, *edges[1:-1], hi], dtype=np.float64)
    cdf = np.concatenate([[0.0], np.cumsum(proportions)[:-1], [1.0]])
    at = np.asarray([1.0 if math.isinf(b) else float(np.interp(b, xs, cdf)) for b in bounds])
    return np.diff(at, prepend=0.0) * float(n)


def _against_own_reference(
    live: StepEvidence, reference: Mapping[str, Any], settings: CanarySettings
) -> tuple[float, float] | None:
    """PSI of one side's live scores against the scores its model gave its own training data, and what
    sampling noise allows for that window; None when either is missing."""
    if not live.score_buckets:
        return None
    bounds = [le for le, _ in live.score_buckets]
    live_bins = np.diff(np.asarray([c for _, c in live.score_buckets], dtype=np.float64), prepend=0.0)
    expected = reference_counts(reference, bounds)
    if expected is None or live_bins.sum() <= 0:
        return None
    live_pooled, expected_pooled = pool_bins(live_bins, expected, settings.min_expected_per_bin)
    psi_noise, _ = noise_bounds(live_pooled, expected_pooled, look_alpha(settings))
    return smoothed_psi(expected_pooled, live_pooled), max(settings.max_score_psi, psi_noise)


def _explain_score_difference(
    canary: StepEvidence,
    stable: StepEvidence,
    references: ScoreReferences,
    score_checks: list[Check],
    settings: CanarySettings,
) -> list[Check]:
    """Judge a canary whose scores differ from the stable version's against each version's own training scores.

    A version retrained because the data moved scores the moved traffic differently from the old one, and
    then the old one is the version whose scores drifted. The difference is explained, and the score checks
    pass, when the stable version's live scores left its own training distribution while the canary's match
    its own; otherwise they stay failed (a canary with shifted scores leaves its own distribution too).
    Returns the score checks as judged, plus both comparisons for the record.
    """
    canary_own = _against_own_reference(canary, references.canary, settings)
    stable_own = _against_own_reference(stable, references.stable, settings)
    if canary_own is None or stable_own is None:
        return score_checks
    canary_check = _upper("score_psi_canary_own_reference", *canary_own, "canary score PSI vs its training scores")
    stable_psi, stable_allowed = stable_own
    stable_drifted = stable_psi > stable_allowed
    stable_check = Check(
        "score_psi_stable_own_reference",
        CheckStatus.SKIPPED,  # informational: whether the stable baseline itself moved
        stable_psi,
        stable_allowed,
        f"stable score PSI vs its training scores {stable_psi:.4g} "
        + ("exceeds" if stable_drifted else "within")
        + f" {stable_allowed:.4g} ({'drifted: the stable baseline moved' if stable_drifted else 'not drifted'})",
    )
    if stable_drifted and canary_check.status == CheckStatus.PASSED:
        why = "explained: the stable version's scores drifted from its training scores, the canary's match its own"
        score_checks = [
            Check(c.name, CheckStatus.PASSED, c.measured, c.allowed, f"{c.detail}; {why}")
            if c.status == CheckStatus.FAILED
            else c
            for c in score_checks
        ]
    return [*score_checks, canary_check, stable_check]


def _comparable_latency(
    canary: StepEvidence, stable: StepEvidence, min_tail: int
) -> tuple[float | None, float | None, float]:
    """Both sides' latency at the highest quantile (at most p99) both samples support with `min_tail`
    observations above it; p99 as reported when a side has no histogram."""

    if not canary.latency_buckets or not stable.latency_buckets:
        return canary.p99_seconds, stable.p99_seconds, LATENCY_QUANTILE
    n = min(canary.latency_buckets[-1][1], stable.latency_buckets[-1][1])
    q = min(LATENCY_QUANTILE, max(0.5, 1.0 - min_tail / n)) if n > 0 else LATENCY_QUANTILE
    q = math.floor(q * 100) / 100
    return (
        histogram_quantile(q, list(canary.latency_buckets)),
        histogram_quantile(q, list(stable.latency_buckets)),
        q,
    )


def analyse(
    canary: StepEvidence,
    stable: StepEvidence,
    settings: CanarySettings,
    references: ScoreReferences | None = None,
) -> Verdict:
    """Judge one traffic step: ROLLBACK if any check fails, WAIT if any cannot be made, else PROMOTE_STEP.

    Never promotes without evidence: below `min_requests` on either side, or with any metric unavailable,
    the verdict is WAIT. Below `min_requests` on the canary side nothing else is judged (a handful of
    requests is noise either way); with enough canary requests, the checks that need only the canary's
    evidence can roll back even while the stable side is short of requests.

    Args:
        canary: Evidence of the new version in the step's window.
        stable: Evidence of the serving version in the same window (the baseline of the relative checks).
        settings: Thresholds.
        references: Each version's scores on its own training data; with them a score difference from the
            stable version can be explained by the stable version's own score drift
            (`_explain_score_difference`).

    Returns:
        The decision and every check with its measured and allowed values.
    """
    s = settings
    volume = [
        Check(
            f"{side}_requests",
            CheckStatus.PASSED if ev.requests >= s.min_requests else CheckStatus.UNAVAILABLE,
            ev.requests,
            float(s.min_requests),
            f"{ev.requests:.0f} {side} requests in the window (need >= {s.min_requests})",
        )
        for side, ev in (("canary", canary), ("stable", stable))
    ]
    if volume[0].status != CheckStatus.PASSED:
        return Verdict(Decision.WAIT, tuple(volume))
    stable_ok = volume[1].status == CheckStatus.PASSED

    checks = [*volume, _upper("error_rate", canary.error_rate, s.max_error_rate, "canary error rate")]
    fallback_rate = canary.fallbacks / canary.scores if canary.scores > 0 else None
    checks.append(_upper("fallback_rate", fallback_rate, s.max_fallback_rate, "canary fallback rate"))
    checks.append(_upper("p99_latency", canary.p99_seconds, s.max_p99_latency_seconds, "canary p99 latency", " s"))
    checks.append(_lower("precision", canary.precision, s.min_precision, "canary precision"))
    checks.append(_lower("recall", canary.recall, s.min_recall, "canary recall"))

    # Relative checks: the stable version in the same window is the baseline (same traffic, same time of day).
    if stable_ok:
        checks.append(
            _upper(
                "error_rate_increase",
                canary.error_rate - stable.error_rate,
                s.max_error_rate_increase,
                "canary error rate above stable",
            )
        )
        canary_q, stable_q, q = _comparable_latency(canary, stable, s.latency_min_tail_observations)
        label = f"p{q * 100:g}"
        allowed = (
            max(stable_q * s.max_p99_latency_ratio, stable_q + s.p99_latency_tolerance_seconds)
            if stable_q is not None
            else None
        )
        if allowed is None:
            checks.append(Check("p99_latency_ratio", CheckStatus.UNAVAILABLE, None, None, "stable latency unavailable"))
        else:
            checks.append(
                _upper(
                    "p99_latency_ratio",
                    canary_q,
                    allowed,
                    f"canary {label} latency (stable {stable_q:.4g} s x {s.max_p99_latency_ratio:g}, "
                    f"or + {s.p99_latency_tolerance_seconds:g} s)",
                    " s",
                )
            )
        counts = bin_counts(canary.score_buckets, stable.score_buckets)
        if counts is None:
            checks.append(_upper("score_psi", None, s.max_score_psi, "score PSI canary vs stable"))
            checks.append(_upper("score_ks", None, s.max_score_ks, "score KS canary vs stable"))
        else:
            # PSI on pooled buckets (its chi-square bound needs enough expected per bin); KS on the buckets as they
            # are (its bound holds for any binning, and pooling a sample too small for several bins into one would
            # leave it nothing to see)
            canary_bins, stable_bins = pool_bins(*counts, s.min_expected_per_bin)
            psi_noise, ks_noise = noise_bounds(canary_bins, stable_bins, look_alpha(s))
            score_checks = [
                _upper(
                    "score_psi",
                    smoothed_psi(stable_bins, canary_bins),
                    max(s.max_score_psi, psi_noise),
                    f"score PSI canary vs stable (threshold {s.max_score_psi:g}, noise bound {psi_noise:.3g})",
                ),
                _upper(
                    "score_ks",
                    ks_of_counts(counts[1], counts[0]),
                    max(s.max_score_ks, ks_noise),
                    f"score KS canary vs stable (threshold {s.max_score_ks:g}, noise bound {ks_noise:.3g})",
                ),
            ]
            if references is not None and any(c.status == CheckStatus.FAILED for c in score_checks):
                score_checks = _explain_score_difference(canary, stable, references, score_checks, s)
            checks.extend(score_checks)

    if any(c.status == CheckStatus.FAILED for c in checks):
        return Verdict(Decision.ROLLBACK, tuple(checks))
    if any(c.status == CheckStatus.UNAVAILABLE for c in checks):
        return Verdict(Decision.WAIT, tuple(checks))
    return Verdict(Decision.PROMOTE_STEP, tuple(checks))


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
