"""Canary analysis decisions: one step's evidence (canary vs stable) gives PROMOTE_STEP, ROLLBACK or WAIT."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mlplatform.monitoring.stats import column_stats, ks_of_counts, ks_statistic, psi, psi_of_counts
from mlplatform.rollout.analysis import CheckStatus, Decision, StepEvidence, analyse, bin_counts
from mlplatform.rollout.settings import CanarySettings
from serving.metrics import SCORE_BUCKETS

SETTINGS = CanarySettings()
EDGES = (*SCORE_BUCKETS[:-1], float("inf"))  # 1.0 is the last finite bound; Prometheus adds +Inf


def cumulative(scores: np.ndarray, edges: tuple[float, ...] = EDGES) -> tuple[tuple[float, float], ...]:
    """The cumulative (le, count) buckets Prometheus would hold for these scores."""
    return tuple((le, float(np.sum(scores <= le))) for le in edges)


def fraud_scores(seed: int, n: int = 2_000, shift: float = 0.0) -> np.ndarray:
    """Scores shaped like the fraud model's: most near 0, a thin tail towards 1."""
    return np.clip(np.random.default_rng(seed).beta(0.5, 8.0, n) + shift, 0.0, 1.0)


def evidence(
    requests: float = 2_000,
    errors: float = 2,
    p99: float | None = 0.008,
    fallbacks: float = 0,
    scores: np.ndarray | None = None,
    seed: int = 1,
    **extra: float | None,
) -> StepEvidence:
    s = fraud_scores(seed) if scores is None else scores
    return StepEvidence(requests, errors, p99, fallbacks, cumulative(s), **extra)


def failed(verdict) -> set[str]:
    return {c.name for c in verdict.checks if c.status == CheckStatus.FAILED}


def test_promote_step_when_canary_is_as_healthy_as_stable():
    verdict = analyse(evidence(seed=1), evidence(seed=2), SETTINGS)
    assert verdict.decision == Decision.PROMOTE_STEP, verdict.checks
    assert verdict.reasons == []


def test_rollback_when_canary_error_rate_exceeds_threshold():
    verdict = analyse(evidence(errors=400), evidence(), SETTINGS)  # 20 % of requests fail
    assert verdict.decision == Decision.ROLLBACK
    assert {"error_rate", "error_rate_increase"} <= failed(verdict)
    reason = next(r for r in verdict.reasons if r.startswith("error_rate:"))
    assert "0.2 " in reason and "0.01" in reason  # measured and allowed


def test_rollback_when_canary_error_rate_rises_above_stable_under_the_absolute_ceiling():
    verdict = analyse(evidence(errors=16), evidence(errors=0), SETTINGS)  # 0.8 % vs 0 %: ceiling 1 %, rise 0.5 %
    assert verdict.decision == Decision.ROLLBACK
    assert failed(verdict) == {"error_rate_increase"}


def test_rollback_when_canary_is_five_times_slower_than_stable():
    verdict = analyse(evidence(p99=0.040), evidence(p99=0.008), SETTINGS)  # under the 0.1 s absolute limit
    assert verdict.decision == Decision.ROLLBACK
    assert failed(verdict) == {"p99_latency_ratio"}
    assert any("0.04 s exceeds allowed 0.012 s" in r for r in verdict.reasons)


def test_latency_difference_within_bucket_tolerance_is_not_a_regression():
    verdict = analyse(evidence(p99=0.0016), evidence(p99=0.0008), SETTINGS)  # 2x, but 0.8 ms apart
    assert verdict.decision == Decision.PROMOTE_STEP


def test_rollback_when_canary_p99_exceeds_absolute_limit():
    slow = SETTINGS.model_copy(update={"max_p99_latency_ratio": 100.0})
    verdict = analyse(evidence(p99=0.3), evidence(p99=0.25), slow)
    assert verdict.decision == Decision.ROLLBACK
    assert failed(verdict) == {"p99_latency"}


def test_rollback_when_canary_scores_shift_from_stable():
    verdict = analyse(evidence(scores=fraud_scores(1, shift=0.3)), evidence(seed=2), SETTINGS)
    assert verdict.decision == Decision.ROLLBACK
    assert {"score_psi", "score_ks"} <= failed(verdict)


def test_rollback_when_canary_fallback_rate_exceeds_threshold():
    verdict = analyse(evidence(fallbacks=100), evidence(), SETTINGS)  # 100 of 2,000 scores = 5 %
    assert verdict.decision == Decision.ROLLBACK
    assert failed(verdict) == {"fallback_rate"}


def test_rollback_when_precision_on_labelled_feedback_is_below_minimum():
    strict = SETTINGS.model_copy(update={"min_precision": 0.5, "min_recall": 0.5})
    verdict = analyse(evidence(precision=0.3, recall=0.8), evidence(), strict)
    assert verdict.decision == Decision.ROLLBACK
    assert failed(verdict) == {"precision"}


def test_missing_labelled_feedback_does_not_block_promotion():
    strict = SETTINGS.model_copy(update={"min_precision": 0.5, "min_recall": 0.5})
    verdict = analyse(evidence(), evidence(), strict)
    assert verdict.decision == Decision.PROMOTE_STEP
    assert {c.name: c.status for c in verdict.checks}["precision"] == CheckStatus.SKIPPED


def test_wait_when_canary_has_too_few_requests_even_if_they_fail():
    verdict = analyse(evidence(requests=50, errors=25), evidence(), SETTINGS)
    assert verdict.decision == Decision.WAIT
    assert verdict.reasons == ["canary_requests: 50 canary requests in the window (need >= 200)"]


def test_wait_when_stable_has_too_few_requests_for_the_comparison():
    verdict = analyse(evidence(), evidence(requests=10), SETTINGS)
    assert verdict.decision == Decision.WAIT
    assert [r.split(":")[0] for r in verdict.reasons] == ["stable_requests"]


def test_canary_only_checks_roll_back_while_stable_lacks_requests():
    verdict = analyse(evidence(errors=400), evidence(requests=10), SETTINGS)
    assert verdict.decision == Decision.ROLLBACK
    assert failed(verdict) == {"error_rate"}


def test_wait_when_latency_metric_unavailable():
    verdict = analyse(evidence(p99=None), evidence(), SETTINGS)
    assert verdict.decision == Decision.WAIT
    assert {r.split(":")[0] for r in verdict.reasons} == {"p99_latency", "p99_latency_ratio"}


def test_wait_when_score_histograms_unavailable():
    no_scores = dataclasses.replace(evidence(), score_buckets=())
    verdict = analyse(no_scores, evidence(), SETTINGS)
    assert verdict.decision == Decision.WAIT
    assert {r.split(":")[0] for r in verdict.reasons} == {"fallback_rate", "score_psi", "score_ks"}


_maybe_p99 = st.none() | st.floats(0.001, 0.003)  # within the 2 ms tolerance of each other
_buckets = st.sampled_from([(), cumulative(fraud_scores(1))])
_side = st.builds(StepEvidence, st.floats(0, 5_000), st.just(0.0), _maybe_p99, st.just(0.0), _buckets)


@settings(max_examples=300, deadline=None)
@given(canary=_side, stable=_side)
def test_never_promotes_without_evidence(canary: StepEvidence, stable: StepEvidence):
    verdict = analyse(canary, stable, SETTINGS)
    enough = all(
        ev.requests >= SETTINGS.min_requests and ev.p99_seconds is not None and ev.score_buckets
        for ev in (canary, stable)
    )
    if not enough:
        assert verdict.decision != Decision.PROMOTE_STEP
    assert verdict.decision != Decision.ROLLBACK  # no error, no fallback, p99s close, same scores


def test_score_histograms_with_different_buckets_are_compared_on_shared_bounds():
    fine = cumulative(np.array([0.01, 0.07, 0.12, 0.6]))
    coarse = cumulative(np.array([0.02, 0.08, 0.3, 0.9]), edges=(0.1, 0.5, float("inf")))
    canary_bins, stable_bins = bin_counts(fine, coarse)
    assert canary_bins.tolist() == [2, 1, 1] and stable_bins.tolist() == [2, 1, 1]
    assert bin_counts(fine, cumulative(np.array([0.5]), edges=(0.33, float("inf")))) is None  # one shared bin


def test_psi_and_ks_of_counts_agree_with_the_value_based_statistics():
    reference, live = fraud_scores(1), fraud_scores(2, shift=0.05)
    ref = column_stats(reference)
    counts_ref = np.asarray(ref["proportions"]) * reference.size
    counts_live = np.histogram(live, bins=np.asarray(ref["edges"]))[0]
    assert psi_of_counts(counts_ref, counts_live) == pytest.approx(psi(ref, live))
    assert ks_of_counts(counts_ref, counts_live) == pytest.approx(ks_statistic(ref, live))


def test_traffic_steps_must_increase_and_end_at_100():
    with pytest.raises(ValidationError, match="strictly increasing"):
        CanarySettings(traffic_steps_percent=[10, 50, 25, 100])
    with pytest.raises(ValidationError, match="end at 100"):
        CanarySettings(traffic_steps_percent=[10, 50])


def test_thresholds_are_read_from_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLPLATFORM_CANARY_MIN_REQUESTS", "1000")
    monkeypatch.setenv("MLPLATFORM_CANARY_TRAFFIC_STEPS_PERCENT", "[5, 100]")
    s = CanarySettings()
    assert (s.min_requests, s.traffic_steps_percent) == (1000, [5, 100])
    assert analyse(evidence(requests=900), evidence(), s).decision == Decision.WAIT


def _distribution_checks(canary: np.ndarray, stable: np.ndarray, settings: CanarySettings) -> set[str]:
    """The failed score-distribution checks for two samples (every other check passes)."""
    n_c, n_s = len(canary), len(stable)
    verdict = analyse(
        evidence(requests=n_c, errors=0, scores=canary),
        evidence(requests=n_s, errors=0, scores=stable),
        settings,
    )
    return {c.name for c in verdict.checks if c.status == CheckStatus.FAILED} & {"score_psi", "score_ks"}


def test_few_canary_requests_from_the_stable_distribution_rarely_roll_back() -> None:
    """Twenty canary scores drawn from the stable distribution: sampling noise alone must not fail PSI or KS
    (measured on these 200 draws: 192 false alarms without pooling and noise bounds, 27 with the noise bounds
    only, 1 with both)."""
    small = CanarySettings(min_requests=15)
    false_alarms = sum(
        bool(_distribution_checks(fraud_scores(seed, 20), fraud_scores(1000 + seed, 150), small)) for seed in range(200)
    )
    assert false_alarms <= 4  # alpha 0.01 per check, two checks: about 2 % at most


def test_few_canary_requests_with_shifted_scores_still_roll_back() -> None:
    small = CanarySettings(min_requests=15)
    misses = sum(
        not _distribution_checks(fraud_scores(seed, 20, shift=0.4), fraud_scores(1000 + seed, 150), small)
        for seed in range(50)
    )
    assert misses == 0


def test_healthy_canaries_are_rarely_rolled_back_over_a_whole_rollout() -> None:
    """A rollout analyses every step many times; noise alone must roll back few healthy canaries over all of them.

    As the e2e rollouts run it (40 requests/s, 4 s windows analysed every second, steps 10/25/50 %), each look's
    samples drawn afresh from the model's score distribution. At a fixed 1 % per test, with an empty bin weighing
    ln(expected / 1e-4) in PSI, 33 of these 200 rollouts were rolled back (measured); with the level split over the
    rollout's tests (`look_alpha`) and the pseudo-count in PSI, 0 of 200, within `distribution_test_alpha` (1 %)."""
    settings = CanarySettings(step_window_seconds=4, analysis_interval_seconds=1, min_requests=15)
    rng = np.random.default_rng(7)

    def draw(n: int) -> np.ndarray:
        return fraud_scores(int(rng.integers(1 << 30)), n)

    def rolled_back() -> bool:
        for percent in (10, 25, 50):
            n_c = 160 * percent // 100
            if any(_distribution_checks(draw(n_c), draw(160 - n_c), settings) for _ in range(4)):
                return True
        return False

    healthy_rolled_back = sum(rolled_back() for _ in range(200))
    assert healthy_rolled_back <= 6, healthy_rolled_back  # about 2 expected at 1 %


def test_a_few_shifted_scores_are_caught_even_when_they_pool_into_one_bin() -> None:
    """Sixteen canary scores against a stable distribution with almost every score in the lowest bucket: pooling for
    PSI leaves one bin (nothing to compare), so the shift must show in KS, which is read on the buckets as they are."""
    from mlplatform.rollout.analysis import bin_counts, pool_bins

    settings = CanarySettings(step_window_seconds=4, analysis_interval_seconds=1, min_requests=15)
    rng = np.random.default_rng(3)
    stable = np.clip(rng.beta(0.3, 40.0, 144), 0.0, 1.0)
    canary = np.clip(rng.beta(0.3, 40.0, 16) + 0.4, 0.0, 1.0)
    counts = bin_counts(cumulative(canary), cumulative(stable))
    assert counts is not None and len(pool_bins(*counts, settings.min_expected_per_bin)[0]) == 1
    assert "score_ks" in _distribution_checks(canary, stable, settings)


def test_pooling_merges_sparse_buckets_and_keeps_totals() -> None:
    from mlplatform.rollout.analysis import pool_bins

    canary = np.array([10.0, 5.0, 1.0, 0.0, 1.0, 3.0])
    stable = np.array([100.0, 40.0, 6.0, 2.0, 1.0, 1.0])
    pc, ps = pool_bins(canary, stable, 5.0)
    assert pc.sum() == canary.sum() and ps.sum() == stable.sum()
    assert len(pc) < len(canary)
    assert all(s >= 5 and s / stable.sum() * canary.sum() >= 5 for s in ps[:-1])


def _latency(seconds: np.ndarray) -> tuple[tuple[float, float], ...]:
    from serving.metrics import LATENCY_BUCKETS

    return tuple((le, float(np.sum(seconds <= le))) for le in (*LATENCY_BUCKETS, float("inf")))


def test_one_slow_request_among_a_hundred_does_not_fail_the_latency_comparison() -> None:
    """p99 of 100 requests is the slowest one; the comparison reads the quantile with 5 observations above it."""
    rng = np.random.default_rng(0)
    stable_s = rng.uniform(0.002, 0.004, 100)
    canary_s = np.append(rng.uniform(0.002, 0.004, 99), 0.015)  # one scheduler hiccup
    ev_c = dataclasses.replace(evidence(requests=100, errors=0), latency_buckets=_latency(canary_s), p99_seconds=0.015)
    ev_s = dataclasses.replace(evidence(requests=100, errors=0), latency_buckets=_latency(stable_s), p99_seconds=0.004)
    small = CanarySettings(min_requests=15, p99_latency_tolerance_seconds=0.002)
    check = next(c for c in analyse(ev_c, ev_s, small).checks if c.name == "p99_latency_ratio")
    assert check.status == CheckStatus.PASSED and "p95" in check.detail
    slow = np.full(100, 0.03)  # every request 25 ms slower: caught
    ev_slow = dataclasses.replace(ev_c, latency_buckets=_latency(slow), p99_seconds=0.03)
    check = next(c for c in analyse(ev_slow, ev_s, small).checks if c.name == "p99_latency_ratio")
    assert check.status == CheckStatus.FAILED


def _retrained(seed: int, n: int = 2_000) -> np.ndarray:
    """Scores of a model retrained on moved data: a different shape than fraud_scores."""
    return np.clip(np.random.default_rng(seed).beta(1.5, 6.0, n), 0.0, 1.0)


def test_a_score_difference_is_explained_when_the_stable_scores_drifted_and_the_canary_matches_its_own():
    """Retrained because the data moved: the old version's scores left its training distribution, the new one
    scores the moved traffic as it scored its own training data. The difference is no reason to roll back."""
    from mlplatform.rollout.analysis import ScoreReferences

    references = ScoreReferences(canary=column_stats(_retrained(10, 20_000)), stable=column_stats(fraud_scores(11)))
    canary, stable = evidence(scores=_retrained(12), errors=0), evidence(scores=_retrained(13), errors=0)
    assert analyse(canary, stable, SETTINGS).decision == Decision.PROMOTE_STEP  # same live distribution
    stable_drifted = evidence(scores=fraud_scores(14, shift=0.3), errors=0)  # the stable version's live scores
    assert {"score_psi", "score_ks"} <= failed(analyse(canary, stable_drifted, SETTINGS))
    verdict = analyse(canary, stable_drifted, SETTINGS, references)
    assert verdict.decision == Decision.PROMOTE_STEP, verdict.reasons
    checks = {c.name: c for c in verdict.checks}
    assert "explained" in checks["score_psi"].detail
    assert checks["score_psi_canary_own_reference"].status == CheckStatus.PASSED
    assert "drifted" in checks["score_psi_stable_own_reference"].detail


def test_shifted_canary_scores_are_not_explained_by_references():
    """A broken canary (scores shifted) leaves its own training distribution: still rolled back. Two versions
    that each match their own training scores but disagree on the same traffic are rolled back too."""
    from mlplatform.rollout.analysis import ScoreReferences

    references = ScoreReferences(canary=column_stats(fraud_scores(20, 20_000)), stable=column_stats(fraud_scores(21)))
    shifted = evidence(scores=fraud_scores(22, shift=0.3), errors=0)
    verdict = analyse(shifted, evidence(scores=fraud_scores(23), errors=0), SETTINGS, references)
    assert verdict.decision == Decision.ROLLBACK
    assert {"score_psi", "score_psi_canary_own_reference"} <= failed(verdict)
    disagreeing = ScoreReferences(canary=column_stats(_retrained(25, 20_000)), stable=column_stats(fraud_scores(26)))
    verdict = analyse(
        evidence(scores=_retrained(27), errors=0), evidence(scores=fraud_scores(28)), SETTINGS, disagreeing
    )
    assert verdict.decision == Decision.ROLLBACK
    assert "score_psi" in failed(verdict) and "score_psi_canary_own_reference" not in failed(verdict)


def test_reference_counts_follow_the_reference_cdf_on_the_live_buckets():
    from mlplatform.rollout.analysis import reference_counts

    ref = column_stats(np.random.default_rng(3).uniform(0, 1, 50_000))
    counts = reference_counts(ref, [0.25, 0.5, 1.0, float("inf")])
    assert counts is not None
    assert counts.tolist() == pytest.approx([12_500, 12_500, 25_000, 0], rel=0.02, abs=50)
    assert reference_counts({"edges": []}, [1.0]) is None
