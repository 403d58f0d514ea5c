"""Model staleness: PR-AUC lost per week of model age, the cadence derived from it, and the alert that cites it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mlplatform.errors import ConfigError
from mlplatform.features.compute import MODEL_FEATURES
from mlplatform.training.loop import TrainConfig
from mlplatform.training.staleness import (
    DecayFit,
    StalenessConfig,
    config_dict,
    derive_cadence,
    fit_decay,
    measure_staleness,
)

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "staleness.json"
RULES = ROOT / "monitoring" / "rules" / "mlplatform.rules.yaml"
RUNBOOK = ROOT / "monitoring" / "RUNBOOK.md"
#: The alert's expression, with the threshold in whole days as its only free part.
STALE_EXPR = re.compile(r"max by \(model_name, model_version\) \(mlplatform_model_age_seconds\) > (\d+) \* 86400")

#: A small timeline: two weeks of training, four weeks of age at a fast drift (0.125 .. 0.875 by week 3).
SMALL = StalenessConfig(
    transactions_per_day=600,
    train_days=14,
    weeks=4,
    drift_per_week=0.25,
    replicates=1,
    seed=11,
    train=TrainConfig(device="cpu", max_epochs=15),
)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Train on one thread: on a shared 2-core machine more threads only contend (and the test is seconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.mltest("model-4")
def test_pr_auc_falls_with_model_age_under_drift(one_thread: None) -> None:
    result = measure_staleness(SMALL)
    pr_auc = [p.pr_auc for p in result.points]
    assert [p.drift for p in result.points] == [0.125, 0.375, 0.625, 0.875]
    assert all(p.positives > 20 for p in result.points), "too few frauds per week for a PR-AUC"
    assert pr_auc[-1] < pr_auc[0] - 0.2, pr_auc
    assert result.fit.significant and result.fit.loss_per_week > 0.05, result.fit
    assert result.cadence.max_age_days is not None
    assert result.cadence.max_age_days == pytest.approx(0.02 / -result.fit.slope_per_day)


@pytest.mark.slow
@pytest.mark.mltest("model-4")
def test_pr_auc_holds_with_model_age_without_drift(one_thread: None) -> None:
    """Without drift the weeks differ only in their dates: age alone must cost nothing (no time-dependent
    feature, no evaluation window that slides into the warm-up), and no cadence is derived from noise."""
    result = measure_staleness(replace(SMALL, drift_per_week=0.0))
    pr_auc = [p.pr_auc for p in result.points]
    assert max(pr_auc) - min(pr_auc) < 0.01, pr_auc
    assert not result.fit.significant
    assert result.cadence.max_age_days is None and result.cadence.alert_threshold_days is None


def test_fit_recovers_a_known_line_and_its_cadence() -> None:
    ages = np.repeat([3.5, 10.5, 17.5, 24.5], 3)
    noise = np.tile([0.004, -0.004, 0.0], 4)
    fit = fit_decay(ages, 0.7 - 0.002 * ages + noise)
    assert fit.slope_per_day == pytest.approx(-0.002, abs=1e-9)
    assert fit.intercept_pr_auc == pytest.approx(0.7, abs=1e-9)
    assert fit.loss_per_week == pytest.approx(0.014, abs=1e-9)
    assert fit.significant
    cadence = derive_cadence(fit, tolerated_pr_auc_loss=0.02, retraining_margin_days=1.0)
    assert cadence.max_age_days == pytest.approx(10.0)
    assert (cadence.alert_threshold_days, cadence.retraining_cadence_days) == (10, 9)
    assert cadence.schedule_keeps_tolerance


def test_fit_keeps_each_replicate_level_and_fits_their_common_slope() -> None:
    ages = np.tile([3.5, 10.5, 17.5, 24.5], 2)
    level = np.repeat([0.6, 0.75], 4)
    noise = np.tile([0.002, -0.002, -0.002, 0.002], 2)
    fit = fit_decay(ages, level - 0.002 * ages + noise, replicates=np.repeat([0, 1], 4))
    pooled = fit_decay(ages, level - 0.002 * ages + noise)
    assert fit.slope_per_day == pytest.approx(-0.002, abs=1e-9)
    assert fit.intercept_pr_auc == pytest.approx(0.675, abs=1e-9)
    # The levels differ by 0.15: as noise around one line they would swamp the slope.
    assert fit.significant and not pooled.significant


def test_no_cadence_from_a_slope_within_its_noise() -> None:
    fit = DecayFit(intercept_pr_auc=0.6, slope_per_day=-0.001, slope_stderr_per_day=0.001, points=12)
    assert derive_cadence(fit, 0.02, 1.0).max_age_days is None


def test_a_loss_faster_than_the_schedule_can_follow_is_flagged() -> None:
    fit = DecayFit(intercept_pr_auc=0.6, slope_per_day=-0.05, slope_stderr_per_day=0.001, points=12)
    cadence = derive_cadence(fit, 0.02, 1.0)
    assert cadence.alert_threshold_days == 1 and cadence.retraining_cadence_days == 1
    assert not cadence.schedule_keeps_tolerance


@pytest.mark.parametrize(
    ("ages", "values", "match"),
    [
        ([1.0, 2.0], [0.5, 0.4], "at least three"),
        ([1.0, 2.0, 3.0], [0.5, 0.4], "differ in count"),
        ([1.0, 2.0, 3.0], [0.5, float("nan"), 0.4], "NaN"),
        ([7.0, 7.0, 7.0], [0.5, 0.4, 0.3], "same model age"),
    ],
)
def test_fit_rejects_points_no_slope_can_come_from(ages: list[float], values: list[float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        fit_decay(ages, values)


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"drift_per_week": 0.2}, "drift_per_week"),
        ({"weeks": 2}, "weeks"),
        ({"transactions_per_day": 10}, "transactions_per_day"),
        ({"tolerated_pr_auc_loss": 0.0}, "tolerated_pr_auc_loss"),
        ({"replicates": 0, "retraining_margin_days": -1.0}, "replicates.*retraining_margin_days"),
    ],
)
def test_bad_configuration_names_the_setting(change: dict, names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        StalenessConfig(**change)


def _stale_rule() -> dict:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r.get("alert") == "MlplatformStaleModel"]
    return rule


@pytest.mark.mltest("model-4")
def test_stale_model_alert_threshold_is_the_cadence_derived_from_the_committed_benchmark() -> None:
    """The alert's threshold, its annotation and the runbook follow from benchmarks/results/staleness.json,
    measured with today's default configuration: rerun `make bench-staleness` and update the rule together."""
    results = json.loads(RESULTS.read_text())
    assert results["config"] == config_dict(StalenessConfig()), (
        "benchmarks/results/staleness.json was measured with another configuration than StalenessConfig's "
        "defaults: run `make bench-staleness`"
    )
    assert results["model_features"] == list(MODEL_FEATURES), (
        "benchmarks/results/staleness.json measured a model with other features: run `make bench-staleness`"
    )
    points = results["points"]
    fit = fit_decay([p["age_days"] for p in points], [p["pr_auc"] for p in points], [p["replicate"] for p in points])
    assert fit.loss_per_week == pytest.approx(results["fit"]["pr_auc_lost_per_week"])
    config = results["config"]
    cadence = derive_cadence(fit, config["tolerated_pr_auc_loss"], config["retraining_margin_days"])
    assert cadence.alert_threshold_days is not None, "the committed benchmark measured no decay"
    assert cadence.alert_threshold_days == results["cadence"]["alert_threshold_days"]
    assert cadence.retraining_cadence_days == results["cadence"]["retraining_cadence_days"]

    rule = _stale_rule()
    match = STALE_EXPR.fullmatch(rule["expr"].strip())
    assert match, f"unexpected MlplatformStaleModel expression: {rule['expr']!r}"
    assert int(match.group(1)) == cadence.alert_threshold_days
    description = " ".join(rule["annotations"]["description"].split())
    assert f"{fit.loss_per_week:.4f} PR-AUC per week" in description
    assert f"more than {cadence.alert_threshold_days} days" in description
    assert "benchmarks/results/staleness.json" in description

    section = RUNBOOK.read_text().split("## MlplatformStaleModel", 1)[1].split("\n## ", 1)[0]
    assert f"{cadence.alert_threshold_days} days" in section
    assert f"every {cadence.retraining_cadence_days} days" in section
