"""Shared fixtures: small generated data and a feature store built from it by the real steps."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from components.features.step import FeaturesResult, run_features
from components.ingest.step import IngestResult, run_ingest
from components.training_set.step import run_training_set
from mlplatform.processes import init_process
from mlplatform.settings import PlatformSettings

init_process()  # the test process is an entry point too: servers and registries built in-process keep their own values

SMALL = {"n_transactions": 20_000, "n_days": 40, "seed": 7}


@dataclass
class Prepared:
    """Outputs of ingest -> features -> training set on small data, in one temporary work dir."""

    settings: PlatformSettings
    raw_path: Path
    ingest: IngestResult
    features: FeaturesResult
    splits: dict[str, Path]

    def frame(self, split: str) -> pd.DataFrame:
        return pd.read_parquet(self.splits[split])


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """The real data steps on 20k transactions with the embedded Feast configuration."""
    work = tmp_path_factory.mktemp("prepared")
    settings = PlatformSettings(work_dir=work)
    raw = work / "raw.parquet"
    ingest = run_ingest(raw, **SMALL)
    feats = run_features(raw, settings)
    splits = {name: work / f"{name}.parquet" for name in ("train", "validation", "test")}
    run_training_set(raw, settings, 7, 7, splits["train"], splits["validation"], splits["test"])
    return Prepared(settings, raw, ingest, feats, splits)


@pytest.fixture(scope="session")
def _migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite database with every migration applied, made once (a new one takes ~5 s)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("mlflow-template")
    store = SqlAlchemyStore(f"sqlite:///{folder / 'mlflow.db'}", (folder / "unused-artifacts").as_uri())
    store.engine.dispose()
    return folder / "mlflow.db"


@pytest.fixture
def mlflow_work_dir(tmp_path: Path, _migrated_mlflow_db: Path) -> Path:
    """`tmp_path` with a copy of an empty, migrated MLflow SQLite database where `PlatformSettings(work_dir=...)`
    looks for it (<work_dir>/mlflow.db): a fresh registry per test without paying the migrations each time."""
    shutil.copy(_migrated_mlflow_db, tmp_path / "mlflow.db")
    return tmp_path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `gpu` where CUDA is absent; they run on a GPU machine."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (none on this machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not `in item.keywords`: a parameter id may be "gpu"
            item.add_marker(skip)
