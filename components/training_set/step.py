"""Training set: point-in-time correct features for labelled events, split by time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlplatform.errors import ConfigError
from mlplatform.features import store as featurestore
from mlplatform.features.compute import request_fields
from mlplatform.settings import PlatformSettings

#: Columns of the raw events kept beside the features (keys, time, label, slicing fields).
EVENT_COLUMNS = ["transaction_id", "customer_id", "merchant_id", "event_timestamp", "is_fraud"]


@dataclass(frozen=True)
class SplitResult:
    """Rows and fraud counts per split, and the split boundaries."""

    train_rows: int
    validation_rows: int
    test_rows: int
    train_fraud: int
    validation_fraud: int
    test_fraud: int
    validation_start: str
    test_start: str


def time_split(
    frame: pd.DataFrame, validation_days: int, test_days: int, warmup_days: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.Timestamp, pd.Timestamp]:
    """Split by event time: the last `test_days` are the test set, the `validation_days` before them
    the validation set, the rest the training set, less its first `warmup_days` (the 30-day aggregates
    are still filling there; served traffic always has full windows).

    Raises:
        ConfigError: When the windows leave a split empty.
    """
    if validation_days < 1 or test_days < 1:
        raise ConfigError(f"validation_days and test_days must be at least 1, got {validation_days} and {test_days}")
    if warmup_days < 0:
        raise ConfigError(f"warmup_days must be at least 0, got {warmup_days}")
    end = frame["event_timestamp"].max()
    test_start = end - pd.Timedelta(days=test_days)
    val_start = test_start - pd.Timedelta(days=validation_days)
    warm_from = frame["event_timestamp"].min() + pd.Timedelta(days=warmup_days)
    ts = frame["event_timestamp"]
    train, val, test = (
        frame[(ts >= warm_from) & (ts < val_start)],
        frame[(ts >= val_start) & (ts < test_start)],
        frame[ts >= test_start],
    )
    for name, part in (("training", train), ("validation", val), ("test", test)):
        if part.empty:
            raise ConfigError(
                f"the {name} split is empty: warmup_days={warmup_days}, validation_days={validation_days} and "
                f"test_days={test_days} do not fit the {frame['event_timestamp'].min()} .. {end} data"
            )
    return train, val, test, val_start, test_start


def run_training_set(
    raw_path: Path,
    settings: PlatformSettings,
    validation_days: int,
    test_days: int,
    train_path: Path,
    validation_path: Path,
    test_path: Path,
    warmup_days: int = 0,
) -> SplitResult:
    """Retrieve the FeatureService's features for every labelled event, as of the event's time, and split
    them by time (`time_split`)."""
    tx = pd.read_parquet(raw_path)
    entity_df = pd.concat([tx[EVENT_COLUMNS], request_fields(tx)], axis=1)
    store = featurestore.open_store(settings.feast_repo, settings.feast_data, settings.feast_config_file)
    frame = store.get_historical_features(
        entity_df=entity_df, features=store.get_feature_service(featurestore.FEATURE_SERVICE)
    ).to_df()
    frame = frame.sort_values(["event_timestamp", "transaction_id"], kind="stable").reset_index(drop=True)
    train, val, test, val_start, test_start = time_split(frame, validation_days, test_days, warmup_days)
    for part, path in ((train, train_path), (val, validation_path), (test, test_path)):
        path.parent.mkdir(parents=True, exist_ok=True)
        part.to_parquet(path, index=False)
    return SplitResult(
        len(train),
        len(val),
        len(test),
        int(train["is_fraud"].sum()),
        int(val["is_fraud"].sum()),
        int(test["is_fraud"].sum()),
        val_start.isoformat(),
        test_start.isoformat(),
    )
