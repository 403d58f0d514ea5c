"""Shared fixtures: small generated data and a feature store built from it by the real steps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from components.features.step import FeaturesResult, run_features
from components.ingest.step import IngestResult, run_ingest
from components.training_set.step import run_training_set
from mlplatform.settings import PlatformSettings

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `gpu` where CUDA is absent; they run on a GPU machine."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (none on this machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not `in item.keywords`: a parameter id may be "gpu"
            item.add_marker(skip)
