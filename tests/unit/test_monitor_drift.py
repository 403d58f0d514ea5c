"""Drift and skew math of the monitor on known inputs, windows, and the gauges it exports."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mlplatform.data.labels import Label
from mlplatform.features.compute import MODEL_FEATURES
from mlplatform.monitoring.drift import PSI_ALERT, Window, feature_drift, live_columns, missing_rate
from mlplatform.monitoring.exporter import GAUGES, Monitor, MonitorCollector, metric_samples
from mlplatform.monitoring.prediction_log import PredictionLog
from mlplatform.monitoring.predictions import load_predictions
from mlplatform.monitoring.references import ReferenceResolver
from mlplatform.monitoring.settings import MonitorSettings
from mlplatform.monitoring.stats import column_stats, reference_stats, standardized_mean_difference
from mlplatform.monitoring.windows import evaluate
from mlplatform.settings import PlatformSettings
from mlplatform.training.model import ModelConfig, build_model, save_model

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _reference_matrix(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Columns like the model's: lognormal amounts/counts, one binary flag (is_night)."""
    x = rng.lognormal(1.0 + shift, 0.6, size=(n, len(MODEL_FEATURES)))
    x[:, MODEL_FEATURES.index("is_night")] = rng.random(n) < 0.05 + 0.3 * shift
    return x


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model artifact (safetensors + config + reference statistics of known distributions)."""
    rng = np.random.default_rng(0)
    x = _reference_matrix(rng, 20_000)
    config = ModelConfig(feature_names=list(MODEL_FEATURES), threshold=0.5)
    ref = reference_stats(x, MODEL_FEATURES, rng.beta(1, 8, 20_000))
    return save_model(build_model(config), config, tmp_path_factory.mktemp("model") / "m", ref)


def record(version: str, x: np.ndarray, score: float, served_at: datetime, i: int) -> dict[str, Any]:
    """A prediction record as serving/transformer.py logs it."""
    return {
        "request_id": f"req-{version}-{i}",
        "record_id": f"tx-{version}-{i}",
        "transaction_id": f"tx-{version}-{i}",
        "served_at": served_at.isoformat(),
        "event_unix_s": served_at.timestamp(),
        "model_name": "fraud-detector",
        "model_version": version,
        "role": "stable",
        "customer_id": i,
        "merchant_id": i % 7,
        "amount": 10.0,
        "features": dict(zip(MODEL_FEATURES, x.tolist(), strict=True)),
        "score": score,
        "is_fraud": score >= 0.5,
        "flags": [],
    }


def write_log(directory: Path, records: list[dict[str, Any]]) -> Path:
    log = PredictionLog(directory).start()
    log.append(records)
    log.close()
    return directory


def window_records(version: str, n: int, shift: float, seed: int, end: datetime = NOW) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    x = _reference_matrix(rng, n, shift)
    scores = np.clip(rng.beta(1, 8, n) + shift * 0.3, 0, 1)
    ids = range(seed * 100_000, seed * 100_000 + n)  # unique across calls
    return [record(version, x[i], float(scores[i]), end - timedelta(seconds=1 + i % 500), j) for i, j in enumerate(ids)]


def test_psi_and_ks_are_low_for_an_undrifted_window_and_high_for_a_drifted_one() -> None:
    rng = np.random.default_rng(1)
    ref = column_stats(rng.normal(0, 1, 20_000))
    same = feature_drift("f", ref, rng.normal(0, 1, 2_000))
    shifted = feature_drift("f", ref, rng.normal(1, 1, 2_000))
    assert same.psi < 0.05 and same.ks is not None and same.ks < 0.05
    assert shifted.psi > PSI_ALERT and shifted.ks is not None and shifted.ks > 0.3
    assert (same.status, shifted.status) == ("ok", "drift")


def test_ks_of_an_undrifted_integer_feature_is_near_zero() -> None:
    # Integer counts put whole atoms on the reference's bin edges; the live CDF must count them as the bins do.
    rng = np.random.default_rng(5)
    ref = column_stats(rng.poisson(2.0, 20_000).astype(float))
    same = feature_drift("cust_txn_count_24h", ref, rng.poisson(2.0, 2_000).astype(float))
    assert same.ks is not None and same.ks < 0.05
    assert feature_drift("cust_txn_count_24h", ref, rng.poisson(4.0, 2_000).astype(float)).ks > 0.3


def test_rare_binary_feature_shift_shows_in_psi_and_skew() -> None:
    # Discrete columns get one reference bin per value (stats.column_stats): with quantile bins a 5 % share
    # of ones had every inner edge at 0, 0 and 1 shared a bin, and PSI could not see the share move.
    rng = np.random.default_rng(2)
    ref = column_stats((rng.random(10_000) < 0.05).astype(float))
    assert ref["edges"] == [-np.inf, 1.0, np.inf]
    drift = feature_drift("is_night", ref, (rng.random(1_000) < 0.4).astype(float))
    assert not drift.continuous and drift.ks is None
    assert drift.psi > PSI_ALERT and drift.status == "drift"
    assert drift.skew > 0.5
    same = feature_drift("is_night", ref, (rng.random(1_000) < 0.05).astype(float))
    assert same.psi < 0.05


def test_skew_is_the_standardized_mean_difference_with_pooled_std() -> None:
    ref = {"mean": 0.0, "std": 1.0}
    # live mean 2, std 1 -> pooled sqrt((1 + 1) / 2) = 1
    assert standardized_mean_difference(ref, np.array([1.0, 3.0, 1.0, 3.0])) == pytest.approx(2.0)
    assert standardized_mean_difference(ref, np.array([-1.0, -3.0])) == pytest.approx(-2.0)
    assert standardized_mean_difference({"mean": 5.0, "std": 0.0}, np.array([5.0, 5.0])) == 0.0
    assert standardized_mean_difference({"mean": 5.0, "std": 0.0}, np.array([6.0, 6.0])) == math.inf
    assert math.isnan(standardized_mean_difference(ref, np.array([np.nan, np.inf])))
    rng = np.random.default_rng(3)
    shifted = standardized_mean_difference(column_stats(rng.normal(0, 2, 50_000)), rng.normal(1, 2, 50_000))
    assert shifted == pytest.approx(0.5, abs=0.03)


def test_missing_rate_counts_absent_null_nan_and_infinite_values() -> None:
    records = [
        {"features": {"a": 1.0}},
        {"features": {"a": None}},
        {"features": {}},
        {"features": {"a": float("nan")}},
        {"features": {"a": float("inf")}},
        {},
        {"features": {"a": "not a number"}},
        {"features": {"a": 2}},
    ]
    values = live_columns(records, ["a"])["a"]
    assert missing_rate(values) == pytest.approx(6 / 8)
    drift = feature_drift("a", column_stats(np.arange(100.0)), values)
    assert drift.missing_rate == pytest.approx(6 / 8)
    assert drift.live_mean == pytest.approx(1.5)  # finite values only


def test_window_holds_end_but_not_start() -> None:
    w = Window.ending(100.0, 10.0)
    assert (w.contains(90.0), w.contains(90.001), w.contains(100.0), w.contains(100.5)) == (False, True, True, False)


def test_drifted_version_gets_high_psi_and_skew_undrifted_low(artifact: Path, tmp_path: Path) -> None:
    log_dir = write_log(
        tmp_path / "log",
        window_records("1", 1_500, 0.0, seed=10)
        + window_records("2", 1_500, 0.8, seed=11)
        + window_records("1", 300, 0.0, seed=12, end=NOW - timedelta(hours=2)),  # outside the window
    )
    settings = MonitorSettings(prediction_log_dir=log_dir, model_dir=artifact, min_window_predictions=100)
    platform = PlatformSettings(work_dir=tmp_path)
    preds = load_predictions(log_dir, "fraud-detector", NOW.timestamp() - 86_400 * 8)
    window = Window.ending(NOW.timestamp(), 3600)
    day = Window.ending(NOW.timestamp(), 86_400)
    result = evaluate(preds, {}, window, day, settings, ReferenceResolver(platform, artifact))
    v1, v2 = result.versions
    assert (v1.model_version, v1.predictions, v2.model_version, v2.predictions) == ("1", 1_500, "2", 1_500)
    assert max(f.psi for f in v1.features) < 0.05
    assert min(f.psi for f in v2.features if f.continuous) > PSI_ALERT
    assert v2.score_psi is not None and v1.score_psi is not None and v2.score_psi > PSI_ALERT > v1.score_psi
    assert all(abs(f.skew) < 0.1 for f in v1.features)
    assert all(f.skew > 0.5 for f in v2.features)
    assert v1.quality is not None and v1.quality.labelled == 0 and v1.quality.precision is None


def test_version_below_min_predictions_exports_no_drift_values(artifact: Path, tmp_path: Path) -> None:
    log_dir = write_log(tmp_path / "log", window_records("1", 300, 0.0, seed=1) + window_records("2", 20, 0.0, seed=2))
    settings = MonitorSettings(prediction_log_dir=log_dir, model_dir=artifact, min_window_predictions=100)
    preds = load_predictions(log_dir, "fraud-detector", 0.0)
    window = Window.ending(NOW.timestamp(), 3600)
    resolver = ReferenceResolver(PlatformSettings(work_dir=tmp_path), artifact)
    result = evaluate(preds, {}, window, window, settings, resolver)
    assert [v.outcome for v in result.versions] == ["ok", "skipped"]
    samples = metric_samples(result)
    versions = {name: {labels[1] for labels, _ in rows} for name, rows in samples.items()}
    for name in ("mlplatform_drift_psi", "mlplatform_drift_ks", "mlplatform_score_psi", "mlplatform_feature_skew"):
        assert versions[name] == {"1"}, name
    assert dict((labels[1], value) for labels, value in samples["mlplatform_monitor_window_predictions"]) == {
        "1": 300.0,
        "2": 20.0,
    }


def test_collector_exports_the_agreed_metric_names(artifact: Path, tmp_path: Path) -> None:
    log_dir = write_log(tmp_path / "log", window_records("3", 200, 0.0, seed=4))
    settings = MonitorSettings(prediction_log_dir=log_dir, model_dir=artifact, min_window_predictions=100)
    preds = load_predictions(log_dir, "fraud-detector", 0.0)
    window = Window.ending(NOW.timestamp(), 3600)
    result = evaluate(preds, {}, window, window, settings, ReferenceResolver(PlatformSettings(), artifact))
    registry = CollectorRegistry()
    collector = MonitorCollector()
    registry.register(collector)
    collector.update(result)
    text = generate_latest(registry).decode()
    assert set(GAUGES) == {
        "mlplatform_drift_psi",
        "mlplatform_drift_ks",
        "mlplatform_score_psi",
        "mlplatform_score_ks",
        "mlplatform_feature_missing_rate",
        "mlplatform_feature_skew",
        "mlplatform_quality_precision",
        "mlplatform_quality_recall",
        "mlplatform_quality_pr_auc",
        "mlplatform_quality_labelled_predictions",
        "mlplatform_monitor_window_predictions",
        "mlplatform_model_age_seconds",
    }
    assert 'mlplatform_drift_psi{feature="amount_log",model_name="fraud-detector",model_version="3"}' in text
    assert 'mlplatform_drift_ks{feature="is_night"' not in text  # discrete: no KS
    assert 'mlplatform_monitor_window_predictions{model_name="fraud-detector",model_version="3"} 200.0' in text
    collector.update(evaluate([], {}, window, window, settings, ReferenceResolver(PlatformSettings(), artifact)))
    assert "model_version=" not in generate_latest(registry).decode()  # a version that left the window is gone


def test_quality_counts_only_labelled_predictions_of_the_quality_window(artifact: Path, tmp_path: Path) -> None:
    recent = window_records("1", 200, 0.0, seed=6)
    old = window_records("1", 100, 0.0, seed=7, end=NOW - timedelta(days=10))  # outside the 7-day window
    log_dir = write_log(tmp_path / "log", recent + old)
    labels = {r["record_id"]: Label(r["record_id"], int(r["score"] > 0.3), 0.0) for r in recent[:120] + old}
    settings = MonitorSettings(model_dir=artifact, min_window_predictions=100, min_labelled_predictions=50)
    preds = load_predictions(log_dir, "fraud-detector", 0.0)
    end = NOW.timestamp()
    result = evaluate(
        preds,
        labels,
        Window.ending(end, 3600),
        Window.ending(end, 7 * 86_400),
        settings,
        ReferenceResolver(PlatformSettings(), artifact),
    )
    [v] = result.versions
    assert v.quality is not None and v.quality.labelled == 120
    assert v.quality.pr_auc == pytest.approx(1.0)  # the labels are a threshold on the score


def test_monitor_loop_counts_outcomes_and_serves_health(artifact: Path, tmp_path: Path) -> None:
    platform = PlatformSettings(work_dir=tmp_path)
    settings = MonitorSettings(model_dir=artifact, min_window_predictions=100, host="127.0.0.1", port=0)
    monitor = Monitor(settings, platform)
    port = monitor.start_http()
    try:
        assert monitor.run_once() is not None  # no log folder yet: no traffic, not a failure
        write_log(tmp_path / "predictions", window_records("5", 150, 0.0, seed=8, end=datetime.now(UTC)))
        monitor.run_once()
        write_log(tmp_path / "predictions", window_records("6", 20, 0.0, seed=9, end=datetime.now(UTC)))
        monitor.run_once()
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'mlplatform_monitor_runs_total{outcome="skipped"} 2.0' in text  # empty, then v6
        assert 'mlplatform_monitor_runs_total{outcome="ok"} 2.0' in text  # v5 twice
        assert 'mlplatform_monitor_runs_total{outcome="error"} 0.0' in text
        assert "mlplatform_monitor_last_success_timestamp_seconds 1." in text
        assert 'mlplatform_drift_psi{feature="amount_log",model_name="fraud-detector",model_version="6"}' not in text
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=5).status_code == 404
        (artifact.parent / "no-reference").mkdir(exist_ok=True)
        broken = Monitor(settings.model_copy(update={"model_dir": artifact.parent / "no-reference"}), platform)
        broken.run_once()
        assert broken.runs.labels(outcome="error")._value.get() == 2  # v5 and v6: no artifact there
    finally:
        monitor.stop()


def test_predictions_outside_the_drift_window_are_kept_only_if_labelled_and_slim(tmp_path: Path) -> None:
    inside = window_records("1", 5, 0.0, seed=13)
    outside = window_records("1", 5, 0.0, seed=14, end=NOW - timedelta(days=2))
    log_dir = write_log(tmp_path / "log", inside + outside)
    labelled = {outside[0]["record_id"], inside[0]["record_id"]}
    since = NOW.timestamp() - 3600
    preds = load_predictions(log_dir, "fraud-detector", 0.0, full_since_unix_s=since, labelled=labelled)
    assert len(preds) == 6
    [slim] = [p for p in preds if p["_served_unix_s"] <= since]
    assert slim["record_id"] == outside[0]["record_id"] and "features" not in slim and slim["score"] is not None
    assert all("features" in p for p in preds if p["_served_unix_s"] > since)
