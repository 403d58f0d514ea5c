"""What each feature is worth and what it costs, on the reference run's data (the pipeline's defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest

from mlplatform.features import store as featurestore
from mlplatform.features.compute import MODEL_FEATURES, ON_DEMAND_FEATURES
from mlplatform.features.cost import stored_bytes
from mlplatform.settings import PlatformSettings
from mlplatform.training.importance import features_adding_nothing
from tests.helpers import evaluate_reference_run

#: The most bytes a scalar feature value may keep per entity in the online store (a float64 ValueProto is 9).
MAX_BYTES_PER_VALUE = 16


@dataclass
class Reference:
    settings: PlatformSettings
    raw: Path
    report: dict[str, Any]
    run_id: str
    card: str


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, _migrated_mlflow_db: Path) -> Reference:
    """The pipeline's steps at its default size (what `make run` trains), MLflow on SQLite."""
    import shutil

    work = tmp_path_factory.mktemp("feature-value")
    shutil.copyfile(_migrated_mlflow_db, work / "mlflow.db")
    ran = evaluate_reference_run(work)
    return Reference(ran["settings"], ran["raw"], ran["report"], ran["run_id"], ran["card"])


@pytest.mark.mltest("data-2")
def test_every_model_feature_adds_something_measurable(reference: Reference) -> None:
    """Shuffling any one feature on the test window costs the model PR-AUC beyond the shuffles' noise; a
    feature that adds nothing fails this test with its figure (merchant_txn_count_30d did, and left the model)."""
    importance = reference.report["importance"]
    assert set(importance) == set(MODEL_FEATURES)
    assert features_adding_nothing(importance) == []
    # the figures reach the model card and the run
    assert "## Feature importance" in reference.card and "adds nothing measurable" not in reference.card
    metrics = mlflow.get_run(reference.run_id).data.metrics
    for name, v in importance.items():
        assert metrics[f"importance_{name}"] == pytest.approx(v["pr_auc_drop"])


@pytest.mark.mltest("data-3")
def test_each_feature_keeps_a_scalars_bytes_in_the_online_store(reference: Reference) -> None:
    """Measured through Feast on the materialized online store: a stored feature keeps one scalar per entity,
    an on-demand one nothing (computed per request)."""
    store = featurestore.open_store(
        reference.settings.feast_repo, reference.settings.feast_data, reference.settings.feast_config_file
    )
    tx = pd.read_parquet(reference.raw).tail(500)
    rows = [{"customer_id": int(c), "merchant_id": int(m)} for c, m in zip(tx.customer_id, tx.merchant_id, strict=True)]
    measured = stored_bytes(store, rows)
    assert set(measured) == set(MODEL_FEATURES)
    for name, size in measured.items():
        if name in ON_DEMAND_FEATURES:
            assert size == 0, name
        else:
            assert 0 < size <= MAX_BYTES_PER_VALUE, f"{name} keeps {size:.1f} bytes per entity"


def test_the_model_card_reports_segments_and_the_run_the_largest_gaps(reference: Reference) -> None:
    inclusion = reference.report["inclusion"]
    assert set(inclusion["segments"]) == {"debit", "credit", "prepaid"}
    assert "### Customer segments" in reference.card
    assert not inclusion["recall_gap"]["exceeded"] and not inclusion["false_positive_rate_gap"]["exceeded"]
    metrics = mlflow.get_run(reference.run_id).data.metrics
    assert metrics["segment_recall_gap"] == pytest.approx(inclusion["recall_gap"]["gap"])
