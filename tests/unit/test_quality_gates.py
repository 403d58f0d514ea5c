"""The slice gate (candidate vs champion per important slice) and the inclusion gate (segments), both ways."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from components.ingest.step import IngestResult
from components.register.step import run_register
from mlplatform.data.generator import CATEGORIES, SEGMENT_SHARES, SEGMENTS, customer_segments
from mlplatform.settings import PlatformSettings
from mlplatform.training.evaluation import slice_masks
from mlplatform.training.quality_gates import (
    GateSettings,
    compare_slices,
    familywise_z,
    quality_gate_reasons,
    segment_disparity,
)

GATE = GateSettings()
N = 20_000


@pytest.fixture(scope="module")
def labelled() -> tuple[pd.DataFrame, np.ndarray]:
    """A test window shaped like the evaluate step's: the slicing columns and 3 % fraud."""
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(
        {
            "customer_id": rng.integers(0, 5_000, N),
            "merchant_category": rng.integers(0, len(CATEGORIES), N),
            "is_night": (rng.random(N) < 0.2).astype(np.float64),
            "amount": rng.lognormal(4.0, 1.2, N),
            "cust_amount_avg_30d": np.where(rng.random(N) < 0.05, 0.0, rng.lognormal(4.0, 0.5, N)),
        }
    )
    return frame, (rng.random(N) < 0.03).astype(int)


def _scores(y: np.ndarray, separation: float, seed: int) -> np.ndarray:
    """Scores of a model whose fraud scores sit `separation` standard deviations above the legitimate ones."""
    rng = np.random.default_rng(seed)
    return 1.0 / (1.0 + np.exp(-(rng.normal(0.0, 1.0, len(y)) + separation * y - 3.0)))


def test_segments_are_a_stable_function_of_the_customer_with_the_documented_shares() -> None:
    ids = np.arange(200_000)
    segments = customer_segments(ids)
    assert set(segments) == set(SEGMENTS)
    for name, share in zip(SEGMENTS, SEGMENT_SHARES, strict=True):
        assert (segments == name).mean() == pytest.approx(share, abs=0.01)
    assert list(customer_segments(ids[:50])) == list(segments[:50])  # the same customer, the same segment


def test_slices_cover_category_time_amount_customer_history_and_segment(labelled) -> None:
    frame, _ = labelled
    names = set(slice_masks(frame))
    assert {f"category={c}" for c in CATEGORIES} <= names
    assert {"time=night", "time=day", "customer=new", "customer=returning"} <= names
    assert {f"segment={s}" for s in SEGMENTS} <= names and any(n.startswith("amount=") for n in names)


@pytest.mark.mltest("model-6")
def test_a_model_better_overall_but_broken_on_one_slice_is_refused_naming_the_slice(labelled) -> None:
    frame, y = labelled
    champion = _scores(y, 2.5, seed=1)
    candidate = _scores(y, 3.0, seed=2)
    jewelry = slice_masks(frame)["category=jewelry"]
    candidate[jewelry] = _scores(y[jewelry], 1.0, seed=3)  # the new model barely separates fraud at jewellers
    assert average_precision_score(y, candidate) > average_precision_score(y, champion)  # better overall

    report = {"slice_gate": compare_slices(frame, y, (candidate, 0.5), (champion, 0.5), GATE)}
    reasons = quality_gate_reasons(report)
    assert reasons and all("slice category=jewelry" in r for r in reasons), reasons
    assert any(r.startswith("pr_auc on slice category=jewelry") for r in reasons)
    regressed = {(r["slice"], r["metric"]) for r in report["slice_gate"]["compared"] if r["regressed"]}
    assert ("category=jewelry", "pr_auc") in regressed


@pytest.mark.mltest("model-6")
def test_a_model_as_good_as_the_champion_passes_every_slice(labelled) -> None:
    """Another draw of the same quality: differences are noise, and the family of 2 x slices comparisons
    (Bonferroni-corrected) refuses none of them."""
    frame, y = labelled
    for seed in range(2):
        gate = compare_slices(frame, y, (_scores(y, 2.5, 10 + seed), 0.5), (_scores(y, 2.5, 20 + seed), 0.5), GATE)
        assert quality_gate_reasons({"slice_gate": gate}) == []
        assert gate["z"] == pytest.approx(familywise_z(GATE.confidence_z, len(gate["compared"])))
        assert gate["z"] > GATE.confidence_z


def test_the_tolerance_grows_as_the_slice_shrinks(labelled) -> None:
    """The same PR-AUC gap is a regression on a slice with many frauds and noise on one with few."""
    frame, y = labelled
    champion = _scores(y, 2.5, seed=1)
    candidate = _scores(y, 2.5, seed=1)
    big = slice_masks(frame)["time=day"]
    small = slice_masks(frame)["customer=new"]
    candidate[big | small] = _scores(y[big | small], 1.6, seed=4)
    rows = {r["slice"]: r for r in compare_slices(frame, y, (candidate, 0.5), (champion, 0.5), GATE)["compared"]}
    day, new = rows["time=day"], rows["customer=new"]
    assert day["positives"] > 10 * new["positives"]
    assert new["tolerance"] > 2 * day["tolerance"]
    assert day["regressed"] and not new["regressed"]


def test_slices_with_too_few_frauds_are_reported_as_not_gated(labelled) -> None:
    frame, y = labelled
    strict = GateSettings(slice_min_positives=100)
    gate = compare_slices(frame, y, (_scores(y, 3, 1), 0.5), (_scores(y, 3, 2), 0.5), strict)
    assert "customer=new" in gate["not_gated"] and "time=day" not in gate["not_gated"]
    assert all(r["positives"] >= 100 for r in gate["compared"])


@pytest.mark.mltest("model-7")
def test_a_model_that_misses_fraud_in_one_segment_is_refused_and_a_fair_one_passes(labelled) -> None:
    frame, y = labelled
    fair = _scores(y, 3.0, seed=1)
    report = {"inclusion": segment_disparity(frame, y, fair, 0.5, GATE)}
    assert quality_gate_reasons(report) == []
    assert set(report["inclusion"]["segments"]) == set(SEGMENTS)
    assert not report["inclusion"]["recall_gap"]["exceeded"]

    unfair = fair.copy()
    prepaid = customer_segments(frame["customer_id"].to_numpy()) == "prepaid"
    unfair[prepaid & (y == 1)] *= np.where(np.random.default_rng(2).random((prepaid & (y == 1)).sum()) < 0.5, 0.1, 1)
    report = {"inclusion": segment_disparity(frame, y, unfair, 0.5, GATE)}
    gap = report["inclusion"]["recall_gap"]
    assert gap["lowest"] == "prepaid" and gap["exceeded"]
    [reason] = quality_gate_reasons(report)
    assert reason.startswith("recall differs between customer segments") and "prepaid" in reason


@pytest.mark.mltest("model-7")
def test_a_model_that_flags_one_segments_legitimate_customers_is_refused(labelled) -> None:
    frame, y = labelled
    scores = _scores(y, 3.0, seed=1)
    credit = customer_segments(frame["customer_id"].to_numpy()) == "credit"
    legit_credit = np.flatnonzero(credit & (y == 0))
    scores[legit_credit[: len(legit_credit) // 20]] = 0.99  # 5 % of credit-card customers' purchases flagged
    report = {"inclusion": segment_disparity(frame, y, scores, 0.5, GATE)}
    gap = report["inclusion"]["false_positive_rate_gap"]
    assert gap["highest"] == "credit" and gap["exceeded"]
    assert any(r.startswith("false-positive rate differs") for r in quality_gate_reasons(report))


def test_a_small_segment_gap_within_noise_is_not_a_disparity(labelled) -> None:
    """With a handful of frauds per segment a gap above the bound is still within noise: not refused."""
    frame, y = labelled
    few = frame.iloc[:3_000]
    scores = _scores(y[:3_000], 3.0, seed=1)
    prepaid = customer_segments(few["customer_id"].to_numpy()) == "prepaid"
    missed = np.flatnonzero(prepaid & (y[:3_000] == 1))
    scores[missed[: len(missed) // 3]] *= 0.1  # a third of the prepaid segment's frauds missed
    gap = segment_disparity(few, y[:3_000], scores, 0.5, GateSettings(slice_min_positives=3))["recall_gap"]
    assert gap["gap"] > GATE.max_segment_recall_gap and not gap["exceeded"]


def test_register_refuses_a_model_the_slice_gate_refuses_and_writes_no_version(mlflow_work_dir: Path) -> None:
    settings = PlatformSettings(work_dir=mlflow_work_dir)
    from mlplatform import registry  # local: configured against this test's own store

    with mlflow.start_run(experiment_id=registry.configure(settings)) as run:
        mlflow.log_text("weights", "model/model.safetensors")
    regressed = {
        "slice": "time=night",
        "metric": "recall",
        "candidate": 0.4,
        "champion": 0.8,
        "standard_error": 0.05,
        "tolerance": 0.17,
        "count": 900,
        "positives": 60,
        "regressed": True,
    }
    report = {
        "model": {"pr_auc": 0.8, "roc_auc": 0.97},
        "baseline": {"pr_auc": 0.3},
        "threshold": 0.5,
        "champion": {"version": "1", "pr_auc": 0.79},
        "slice_gate": {"compared": [regressed], "not_gated": [], "z": 3.0},
    }
    ingest = IngestResult(rows=1000, fraud_rows=20, data_hash="h", start="a", end="b")
    result = run_register(run.info.run_id, report, ingest, {}, "gate-test", settings)
    assert not result.registered
    [reason] = result.reasons
    assert "recall on slice time=night" in reason and "0.4000" in reason and "0.8000" in reason
    assert mlflow.MlflowClient().search_model_versions(f"name='{settings.registered_model_name}'") == []
    assert mlflow.get_run(run.info.run_id).data.tags["gate"] == "rejected"
