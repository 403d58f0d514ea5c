"""Data tests of the transaction generator: schema, ranges, label balance, determinism, drift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlplatform.data.generator import CATEGORIES, TRANSACTION_COLUMNS, GeneratorConfig, generate_transactions


@pytest.fixture(scope="module")
def tx() -> pd.DataFrame:
    return generate_transactions(GeneratorConfig(n_transactions=30_000, n_days=30, seed=1))


def test_schema_and_order(tx: pd.DataFrame) -> None:
    assert list(tx.columns) == list(TRANSACTION_COLUMNS)
    assert len(tx) == 30_000
    assert tx["transaction_id"].is_unique
    assert tx["event_timestamp"].is_monotonic_increasing
    assert str(tx["event_timestamp"].dt.tz) == "UTC"
    assert tx.notna().all().all()


def test_values_within_ranges(tx: pd.DataFrame) -> None:
    assert (tx["amount"] > 0).all() and (tx["amount"] <= 50_000).all()
    assert tx["merchant_category"].between(0, len(CATEGORIES) - 1).all()
    assert set(tx["is_fraud"].unique()) == {0, 1}
    assert (tx["label_timestamp"] > tx["event_timestamp"]).all()
    span = tx["event_timestamp"].max() - tx["event_timestamp"].min()
    assert span <= pd.Timedelta(days=30)


def test_fraud_rate_is_realistic(tx: pd.DataFrame) -> None:
    assert 0.01 <= tx["is_fraud"].mean() <= 0.03


def test_fraud_shows_the_documented_patterns(tx: pd.DataFrame) -> None:
    fraud, legit = tx[tx.is_fraud == 1], tx[tx.is_fraud == 0]
    assert fraud["amount"].median() > 2 * legit["amount"].median()
    night = tx["event_timestamp"].dt.hour < 6
    assert tx[night]["is_fraud"].mean() > 3 * tx[~night]["is_fraud"].mean()
    # Bursts: a fraud transaction is often followed by another on the same card within minutes.
    f = fraud.sort_values(["customer_id", "event_timestamp"])
    gaps = f.groupby("customer_id")["event_timestamp"].diff().dropna()
    assert (gaps < pd.Timedelta(minutes=30)).mean() > 0.3


def test_no_pile_up_of_transactions_at_one_instant(tx: pd.DataFrame) -> None:
    seconds = (
        tx["event_timestamp"].dt.hour * 3600 + tx["event_timestamp"].dt.minute * 60 + tx["event_timestamp"].dt.second
    )
    assert (seconds == 6 * 3600).sum() <= 3  # the edge of the daytime curve is not a pile-up
    assert not tx.duplicated(["customer_id", "event_timestamp"]).any()


def test_same_seed_gives_identical_data() -> None:
    a = generate_transactions(GeneratorConfig(n_transactions=5_000, seed=3))
    b = generate_transactions(GeneratorConfig(n_transactions=5_000, seed=3))
    c = generate_transactions(GeneratorConfig(n_transactions=5_000, seed=4))
    pd.testing.assert_frame_equal(a, b)
    assert not a["amount"].equals(c["amount"])


def test_drift_shifts_amounts_and_night_activity() -> None:
    base = generate_transactions(GeneratorConfig(n_transactions=20_000, seed=5))
    drifted = generate_transactions(GeneratorConfig(n_transactions=20_000, seed=5, drift=1.0))
    assert drifted["amount"].median() > 1.3 * base["amount"].median()
    assert _night_share(drifted) > 1.5 * _night_share(base)
    # Fraud moves to small purchases: fraud amounts fall relative to legit ones.
    assert _fraud_amount_ratio(drifted) < 0.5 * _fraud_amount_ratio(base)


def _night_share(df: pd.DataFrame) -> float:
    return float((df["event_timestamp"].dt.hour < 6).mean())


def _fraud_amount_ratio(df: pd.DataFrame) -> float:
    return float(df[df.is_fraud == 1]["amount"].median() / df[df.is_fraud == 0]["amount"].median())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_transactions": 10}, "n_transactions"),
        ({"n_days": 0}, "n_days"),
        ({"fraud_rate": 0.9}, "fraud_rate"),
        ({"drift": 2.0}, "drift"),
    ],
)
def test_invalid_config_is_rejected_naming_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GeneratorConfig(**kwargs)


def test_size_is_configurable() -> None:
    assert len(generate_transactions(GeneratorConfig(n_transactions=2_345))) == 2_345
    assert np.isclose(
        generate_transactions(GeneratorConfig(n_transactions=5_000, fraud_rate=0.01)).is_fraud.mean(), 0.01, atol=0.002
    )
