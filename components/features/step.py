"""Features: compute the batch feature tables, `feast apply`, and materialize into the online store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mlplatform.features import store as featurestore
from mlplatform.features.compute import customer_features, merchant_features
from mlplatform.settings import PlatformSettings


@dataclass(frozen=True)
class FeaturesResult:
    """What the features step registered and loaded."""

    customer_rows: int
    merchant_rows: int
    materialized_until: str
    applied: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)


def run_features(raw_path: Path, settings: PlatformSettings) -> FeaturesResult:
    """Build the feature views' sources from the raw snapshot, apply the repo and materialize.

    Args:
        raw_path: The raw snapshot written by ingest.
        settings: Where the feature repo and the Feast data live.
    """
    tx = pd.read_parquet(raw_path)
    cust, merch = customer_features(tx), merchant_features(tx)
    featurestore.write_sources(settings.feast_data, cust, merch)
    store = featurestore.open_store(settings.feast_repo, settings.feast_data, settings.feast_config_file)
    applied = featurestore.apply_repo(store, settings.feast_repo)
    start = min(cust["event_timestamp"].min(), merch["event_timestamp"].min()).to_pydatetime()
    end = max(cust["event_timestamp"].max(), merch["event_timestamp"].max()).to_pydatetime()
    featurestore.materialize(store, start, end)
    return FeaturesResult(
        customer_rows=len(cust),
        merchant_rows=len(merch),
        materialized_until=end.isoformat(),
        applied=applied,
        versions=featurestore.feature_view_versions(store),
    )
