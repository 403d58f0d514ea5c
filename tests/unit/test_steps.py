"""Step functions on their own: ingest, training set split, data validation, promotion gate, registry."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from components.ingest.step import content_hash, run_ingest
from components.training_set.step import time_split
from components.validate.step import ValidationRules, run_validate
from mlplatform import registry
from mlplatform.errors import ConfigError, DataValidationError, PromotionRejected
from mlplatform.features.compute import MODEL_FEATURES
from mlplatform.settings import PlatformSettings
from tests.conftest import Prepared


def test_ingest_records_hash_and_counts(tmp_path: Path) -> None:
    a = run_ingest(tmp_path / "a.parquet", n_transactions=3_000, n_days=10, seed=1)
    b = run_ingest(tmp_path / "b.parquet", n_transactions=3_000, n_days=10, seed=1)
    c = run_ingest(tmp_path / "c.parquet", n_transactions=3_000, n_days=10, seed=2)
    assert a.rows == 3_000 and 0 < a.fraud_rows < 200
    assert a.data_hash == b.data_hash != c.data_hash
    assert content_hash(pd.read_parquet(tmp_path / "a.parquet")) == a.data_hash


def test_ingest_loads_an_existing_snapshot_and_checks_its_columns(tmp_path: Path) -> None:
    first = run_ingest(tmp_path / "a.parquet", n_transactions=2_000, n_days=10)
    again = run_ingest(tmp_path / "b.parquet", source_path=str(tmp_path / "a.parquet"))
    assert again.data_hash == first.data_hash
    pd.read_parquet(tmp_path / "a.parquet").drop(columns=["amount"]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ConfigError, match="amount"):
        run_ingest(tmp_path / "c.parquet", source_path=str(tmp_path / "bad.parquet"))
    with pytest.raises(ConfigError, match="does not exist"):
        run_ingest(tmp_path / "c.parquet", source_path=str(tmp_path / "missing.parquet"))
    with pytest.raises(ConfigError, match="n_transactions"):
        run_ingest(tmp_path / "c.parquet", n_transactions=3)


def test_training_set_is_point_in_time_and_split_by_time(prepared: Prepared) -> None:
    train, val, test = (prepared.frame(s) for s in ("train", "validation", "test"))
    assert train["event_timestamp"].max() < val["event_timestamp"].min()
    assert val["event_timestamp"].max() < test["event_timestamp"].min()
    assert len(train) + len(val) + len(test) == prepared.ingest.rows
    assert set(MODEL_FEATURES) <= set(train.columns)
    # No event sees a customer aggregate that includes itself: the first purchase has no history.
    firsts = train.sort_values("event_timestamp").groupby("customer_id").head(1)
    assert firsts["cust_txn_count_7d"].fillna(0).eq(0).all()


def test_time_split_names_the_empty_split() -> None:
    frame = pd.DataFrame({"event_timestamp": pd.date_range("2026-01-01", periods=10, freq="D", tz="UTC")})
    with pytest.raises(ConfigError, match="training split is empty"):
        time_split(frame, 5, 5)
    with pytest.raises(ConfigError, match="at least 1"):
        time_split(frame, 0, 5)
    with pytest.raises(ConfigError, match="training split is empty: warmup_days=3"):
        time_split(frame, 3, 3, warmup_days=3)


def test_training_starts_once_the_30_day_aggregates_are_warm() -> None:
    """The first warmup_days carry partial 30-day counts that served traffic never has: not trained on."""
    frame = pd.DataFrame({"event_timestamp": pd.date_range("2026-01-01", periods=60, freq="D", tz="UTC")})
    train, val, test, val_start, _ = time_split(frame, 10, 10, warmup_days=30)
    assert train["event_timestamp"].min() == pd.Timestamp("2026-01-31", tz="UTC")
    assert train["event_timestamp"].max() < val_start
    assert len(train) == 39 - 30 and len(train) + len(val) + len(test) == 60 - 30
    everything, *_ = time_split(frame, 10, 10)
    assert len(everything) == 39  # the 30 warm-up days are the difference


def test_validation_passes_on_good_data(prepared: Prepared) -> None:
    report = run_validate(prepared.splits, None)
    assert report.checks > 50 and not report.violations


def _broken(prepared: Prepared, tmp_path: Path, mutate) -> dict[str, Path]:
    frame = prepared.frame("train")
    mutate(frame)
    path = tmp_path / "train.parquet"
    frame.to_parquet(path)
    return {**prepared.splits, "train": path}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.__setitem__("amount", -f["amount"]), r"train\.amount: .* outside .* \(range\)"),
        (
            lambda f: f.__setitem__("amount_log", np.where(f.index < 10, np.nan, f["amount_log"])),
            r"train\.amount_log: .* nulls, none allowed \(nulls\)",
        ),
        (lambda f: f.__setitem__("is_fraud", 0), r"train\.is_fraud: fraud rate 0\.0000 .* \(label balance\)"),
        (
            lambda f: f.drop(columns=["merchant_fraud_rate_30d"], inplace=True),
            r"train\.merchant_fraud_rate_30d: required column is missing \(schema\)",
        ),
        (lambda f: f.__setitem__("cust_txn_count_7d", np.nan), r"train\.cust_txn_count_7d: 100\.00% nulls"),
    ],
    ids=["negative-amount", "null-request-feature", "no-fraud", "missing-column", "all-null-store-feature"],
)
def test_validation_failure_names_column_and_rule(prepared: Prepared, tmp_path: Path, mutate, message: str) -> None:
    with pytest.raises(DataValidationError, match=message):
        run_validate(_broken(prepared, tmp_path, mutate), None)


def test_validation_flags_drift_against_the_champion_reference(prepared: Prepared, tmp_path: Path) -> None:
    from mlplatform.features.compute import model_input
    from mlplatform.monitoring.stats import reference_stats

    ref = reference_stats(model_input(prepared.frame("train")), MODEL_FEATURES)
    assert run_validate(prepared.splits, ref).feature_psi["amount_log"] < 0.05
    shifted = _broken(prepared, tmp_path, lambda f: f.__setitem__("amount_log", f["amount_log"] + 3))
    with pytest.raises(DataValidationError, match=r"train\.amount_log: PSI .* \(drift\)"):
        run_validate(shifted, ref, ValidationRules())
    # a setting moves the threshold; a run an alert started retrains on the moved data: a warning
    loose = ValidationRules.from_settings(PlatformSettings(validate_max_feature_psi=1000.0))
    assert run_validate(shifted, ref, loose).violations == []
    report = run_validate(shifted, ref, ValidationRules(), trigger="alert:MlplatformFeatureDrift")
    assert report.violations == [] and any("amount_log" in w and "expected" in w for w in report.warnings)
    # the schema, range and missing-value checks still fail an alert-started run
    with pytest.raises(DataValidationError, match="amount: .* outside"):
        broken = _broken(prepared, tmp_path, lambda f: f.__setitem__("amount", -f["amount"]))
        run_validate(broken, ref, ValidationRules(), trigger="alert:MlplatformFeatureDrift")


def test_gate_reasons() -> None:
    s = PlatformSettings(
        gate_min_roc_auc=0.8, gate_min_pr_auc=0.3, gate_min_baseline_ratio=1.2, gate_max_regression=0.02
    )
    good = {"roc_auc": 0.95, "pr_auc": 0.7}
    assert registry.gate_reasons(good, 0.3, None, s) == []
    assert registry.gate_reasons(good, 0.3, 0.71, s) == []
    assert any("regresses" in r for r in registry.gate_reasons(good, 0.3, 0.75, s))
    assert any("rule baseline" in r for r in registry.gate_reasons(good, 0.6, None, s))
    assert len(registry.gate_reasons({"roc_auc": 0.5, "pr_auc": 0.1}, 0.3, None, s)) == 3
    assert registry.gate_reasons({"roc_auc": float("nan"), "pr_auc": float("nan")}, 0.1, None, s)


@pytest.fixture()
def sqlite_mlflow(mlflow_work_dir: Path) -> PlatformSettings:
    settings = PlatformSettings(work_dir=mlflow_work_dir)
    registry.configure(settings)
    return settings


def _model_run(settings: PlatformSettings) -> tuple[str, str]:
    with mlflow.start_run(experiment_id=registry.configure(settings)) as run:
        mlflow.log_text("weights", "model/model.safetensors")
    return run.info.run_id, f"{run.info.artifact_uri}/model"


def test_first_version_becomes_champion_and_later_ones_challenger(sqlite_mlflow: PlatformSettings) -> None:
    run_id, source = _model_run(sqlite_mlflow)
    v1 = registry.register_version("m", source, run_id, {"data_hash": "x"}, [])
    v2 = registry.register_version("m", source, run_id, {"data_hash": "y"}, [])
    assert set(v1.aliases) == {"champion", "challenger"} and v2.aliases == ["challenger"]
    assert registry.get_alias("m", "champion").version == "1"
    assert registry.get_alias("m", "challenger").version == "2"
    assert registry.get_alias("m", "champion").tags["data_hash"] == "x"
    assert registry.get_alias("nope", "champion") is None


def test_rejected_model_writes_nothing(sqlite_mlflow: PlatformSettings) -> None:
    run_id, source = _model_run(sqlite_mlflow)
    with pytest.raises(PromotionRejected, match="below"):
        registry.register_version("m", source, run_id, {}, ["test PR-AUC 0.1 is below the minimum 0.3"])
    assert mlflow.MlflowClient().search_model_versions("name='m'") == []


def test_failed_alias_write_leaves_no_half_registered_version(sqlite_mlflow: PlatformSettings, monkeypatch) -> None:
    run_id, source = _model_run(sqlite_mlflow)

    def boom(*args, **kwargs):
        raise RuntimeError("registry went away")

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", boom)
    with pytest.raises(RuntimeError, match="went away"):
        registry.register_version("m", source, run_id, {}, [])
    assert mlflow.MlflowClient().search_model_versions("name='m'") == []


def test_a_version_left_pending_by_a_registry_outage_is_removed_by_the_next_registration(
    sqlite_mlflow: PlatformSettings, monkeypatch
) -> None:
    """The registry fails between creating the version and its aliases, and stays down for the delete: the
    version stays, tagged pending, with no alias (nothing serves it). The next registration removes it."""
    run_id, source = _model_run(sqlite_mlflow)
    client = mlflow.MlflowClient()

    def down(*args, **kwargs):
        raise RuntimeError("registry went away")

    with monkeypatch.context() as outage:
        outage.setattr(mlflow.MlflowClient, "set_registered_model_alias", down)
        outage.setattr(mlflow.MlflowClient, "delete_model_version", down)
        with pytest.raises(RuntimeError, match="went away"):
            registry.register_version("m", source, run_id, {}, [])
    [left] = client.search_model_versions("name='m'")
    assert left.tags.get(registry.REGISTRATION_PENDING_TAG) == "true" and not left.aliases
    # a pending version younger than the grace period may be a registration in progress: left alone
    assert registry.remove_abandoned_registrations("m") == []
    registered = registry.register_version("m", source, run_id, {}, [], abandoned_after_seconds=0.0)
    assert [str(v.version) for v in client.search_model_versions("name='m'")] == [registered.version]
    assert set(registered.aliases) == {"champion", "challenger"}
    assert registry.REGISTRATION_PENDING_TAG not in client.get_model_version("m", registered.version).tags


def test_a_pending_version_that_got_its_aliases_is_kept_and_untagged(sqlite_mlflow: PlatformSettings) -> None:
    """Aliases set, then the registry failed before the tag removal: the version may be serving; never deleted."""
    run_id, source = _model_run(sqlite_mlflow)
    client = mlflow.MlflowClient()
    registered = registry.register_version("m", source, run_id, {}, [])
    client.set_model_version_tag("m", registered.version, registry.REGISTRATION_PENDING_TAG, "true")
    assert registry.remove_abandoned_registrations("m", older_than_seconds=0.0) == []
    kept = client.get_model_version("m", registered.version)
    assert set(kept.aliases) == {"champion", "challenger"}
    assert registry.REGISTRATION_PENDING_TAG not in kept.tags


def test_every_alias_move_records_who_made_it_and_when(sqlite_mlflow: PlatformSettings, monkeypatch) -> None:
    """Without MLflow credentials (local SQLite) the OS login is the identity; with them, the MLflow user."""
    import getpass

    run_id, source = _model_run(sqlite_mlflow)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    v1 = registry.register_version("m", source, run_id, {}, [])
    v2 = registry.register_version("m", source, run_id, {}, [])
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "approver-1")
    assert registry.promote_champion("m", v2.version) == ["previous -> 1", "champion -> 2", "challenger removed"]
    tags = {v: registry.get_version("m", v).tags for v in (v1.version, v2.version)}
    local = f"os:{getpass.getuser()}"
    assert tags["1"]["mlplatform.alias.champion.moved_by"] == local
    assert tags["1"]["mlplatform.alias.previous.moved_by"] == "approver-1"
    assert tags["2"]["mlplatform.alias.challenger.moved_by"] == local
    assert tags["2"]["mlplatform.alias.champion.moved_by"] == "approver-1"
    assert tags["2"]["mlplatform.alias.challenger.removed_by"] == "approver-1"
    assert tags["2"]["mlplatform.alias.champion.moved_at"] >= tags["2"]["mlplatform.alias.challenger.moved_at"]


def test_features_applied_twice_in_one_process_read_each_runs_own_sources(tmp_path: Path) -> None:
    from components.features.step import run_features
    from mlplatform.features import store as featurestore

    for run in ("a", "b"):
        settings = PlatformSettings(work_dir=tmp_path / run)
        raw = tmp_path / f"{run}.parquet"
        run_ingest(raw, n_transactions=2_000, n_days=10, seed=1)
        run_features(raw, settings)
        store = featurestore.open_store(settings.feast_repo, settings.feast_data)
        source = store.get_feature_view("customer_stats").batch_source.path
        assert source.startswith(str(settings.feast_data)), source


def test_artifacts_go_to_the_tracking_server_unless_a_location_is_set(tmp_path: Path) -> None:
    assert PlatformSettings(work_dir=tmp_path).artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()
    remote = PlatformSettings(work_dir=tmp_path, mlflow_tracking_uri="http://mlflow:5000")
    assert remote.artifact_location is None
    explicit = PlatformSettings(mlflow_tracking_uri="http://mlflow:5000", mlflow_artifact_location="s3://b/p")
    assert explicit.artifact_location == "s3://b/p"
