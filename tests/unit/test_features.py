"""Feature logic: window aggregates, no leakage from the future, request-time features, model input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlplatform.data.generator import GeneratorConfig, generate_transactions
from mlplatform.features.compute import (
    CUSTOMER_FRESHNESS_S,
    FEATURE_DEFAULTS,
    LABEL_MATURITY_DAYS,
    MODEL_FEATURES,
    ON_DEMAND_FEATURES,
    customer_features,
    merchant_features,
    model_input,
    on_demand_features,
    request_fields,
)


@pytest.fixture(scope="module")
def tx() -> pd.DataFrame:
    return generate_transactions(GeneratorConfig(n_transactions=8_000, n_days=40, seed=11))


def test_customer_windows_match_a_brute_force_count(tx: pd.DataFrame) -> None:
    feats = customer_features(tx)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(feats), 40, replace=False):
        row = feats.iloc[i]
        t = row["event_timestamp"] - pd.Timedelta(seconds=CUSTOMER_FRESHNESS_S)
        mine = tx[(tx.customer_id == row["customer_id"]) & (tx.event_timestamp <= t)]
        last24 = mine[mine.event_timestamp > t - pd.Timedelta(hours=24)]
        last30 = mine[mine.event_timestamp > t - pd.Timedelta(days=30)]
        assert row["cust_txn_count_24h"] == len(last24)
        assert row["cust_txn_count_30d"] == len(last30)
        assert row["cust_amount_avg_30d"] == pytest.approx(last30["amount"].mean())


def test_customer_rows_become_visible_only_after_their_transaction(tx: pd.DataFrame) -> None:
    feats = customer_features(tx)
    own = tx.drop_duplicates(["customer_id", "event_timestamp"]).sort_values(["customer_id", "event_timestamp"])
    assert (feats["event_timestamp"].to_numpy() > own["event_timestamp"].to_numpy()).all()
    assert (feats["customer_id"].to_numpy() == own["customer_id"].to_numpy()).all()


def test_simultaneous_transactions_give_one_row_that_counts_them_all() -> None:
    t = pd.Timestamp("2026-01-05 12:00", tz="UTC")
    tx = pd.DataFrame(
        {
            "customer_id": [1, 1, 1],
            "merchant_category": [0, 1, 1],
            "amount": [10.0, 20.0, 30.0],
            "event_timestamp": [t - pd.Timedelta(minutes=30), t, t],
        }
    )
    feats = customer_features(tx)
    assert len(feats) == 2  # one row per distinct instant: a point-in-time join never sees a tie
    last = feats.iloc[-1]
    assert last["cust_txn_count_1h"] == 3 and last["cust_amount_avg_30d"] == pytest.approx(20.0)


def test_merchant_rate_ignores_labels_younger_than_maturity(tx: pd.DataFrame) -> None:
    before = merchant_features(tx)
    # Flip every label in the last LABEL_MATURITY_DAYS days: no snapshot may change.
    recent = tx["event_timestamp"] >= tx["event_timestamp"].max().floor("D") - pd.Timedelta(
        days=LABEL_MATURITY_DAYS - 1
    )
    flipped = tx.assign(is_fraud=np.where(recent, 1 - tx["is_fraud"], tx["is_fraud"]))
    after = merchant_features(flipped)
    pd.testing.assert_frame_equal(before, after)
    # ...while flipping older labels does change the rates.
    older = tx.assign(is_fraud=1 - tx["is_fraud"])
    assert not merchant_features(older)["merchant_fraud_rate_30d"].equals(before["merchant_fraud_rate_30d"])


def test_merchant_snapshot_covers_only_the_past(tx: pd.DataFrame) -> None:
    feats = merchant_features(tx)
    first_day = feats["event_timestamp"].min()
    day0 = feats[feats.event_timestamp == first_day]
    assert (day0["merchant_txn_count_30d"] == 0).all()  # nothing happened before the first midnight
    assert feats["merchant_fraud_rate_30d"].between(0, 1).all()


def test_on_demand_features_are_finite_for_unknown_entities() -> None:
    inputs = pd.DataFrame(
        {
            "amount": [120.0, 5.0],
            "event_unix_s": [1.77e9, 1.77e9 + 3600],
            "cust_amount_avg_30d": [np.nan, 50.0],
            "cust_amount_std_30d": [np.nan, 10.0],
            "cust_last_txn_unix_s": [np.nan, 1.77e9],
            "merchant_category": [np.nan, 2],
            **{f"cust_cat_share_{c}": [np.nan, 0.5 if c == 2 else 0.0] for c in range(8)},
        }
    )
    out = on_demand_features(inputs)
    assert list(out.columns) == list(ON_DEMAND_FEATURES)
    assert np.isfinite(out.to_numpy()).all()
    assert out.loc[0, "amount_log_ratio_30d"] == 0.0  # no history: the amount is its own reference
    assert out.loc[1, "category_share_30d"] == 0.5
    assert out.loc[1, "log_seconds_since_last"] == pytest.approx(np.log1p(3600))


def test_amount_far_above_usual_raises_ratio_and_zscore() -> None:
    base = {
        "event_unix_s": [1.77e9] * 2,
        "cust_amount_avg_30d": [50.0] * 2,
        "cust_amount_std_30d": [10.0] * 2,
        "cust_last_txn_unix_s": [1.77e9 - 60] * 2,
        "merchant_category": [1, 1],
        **{f"cust_cat_share_{c}": [0.0] * 2 for c in range(8)},
    }
    out = on_demand_features(pd.DataFrame({"amount": [50.0, 500.0], **base}))
    assert out.loc[1, "amount_log_ratio_30d"] > out.loc[0, "amount_log_ratio_30d"] + 2
    assert out.loc[1, "amount_zscore_30d"] > 10


def test_model_input_orders_features_and_fills_defaults() -> None:
    frame = pd.DataFrame({f: [float(i)] for i, f in enumerate(MODEL_FEATURES)})
    frame.loc[0, "merchant_fraud_rate_30d"] = np.nan
    x = model_input(frame)
    assert x.dtype == np.float32 and x.shape == (1, len(MODEL_FEATURES))
    i = MODEL_FEATURES.index("merchant_fraud_rate_30d")
    assert x[0, i] == pytest.approx(FEATURE_DEFAULTS["merchant_fraud_rate_30d"])
    assert x[0, 0] == 0.0 and x[0, 1] == 1.0


def test_model_input_names_missing_features() -> None:
    with pytest.raises(KeyError, match="amount_log"):
        model_input(pd.DataFrame({"x": [1.0]}))


def test_request_fields_are_unix_seconds(tx: pd.DataFrame) -> None:
    fields = request_fields(tx.head(3))
    expected = tx.head(3)["event_timestamp"].astype("int64") / 1e9
    np.testing.assert_allclose(fields["event_unix_s"], expected)


def test_a_customer_row_older_than_the_ttl_at_the_events_time_is_not_served() -> None:
    """Online rows are expired by event time as the training sets' point-in-time join expires them (Feast's online
    read measures a view's TTL against the wall clock, which a replay of past traffic does not share)."""
    from mlplatform.features.compute import CUSTOMER_FEATURES, CUSTOMER_FRESHNESS_S, CUSTOMER_TTL_S, expire_customers

    last = 1_000_000.0
    online = {f: [1.0, 1.0, None] for f in CUSTOMER_FEATURES}
    online["cust_last_txn_unix_s"] = [last, last, None]
    edge = last + CUSTOMER_FRESHNESS_S + CUSTOMER_TTL_S
    assert expire_customers(online, [edge, edge + 1, edge + 1]) == 1
    assert online["cust_txn_count_30d"] == [1.0, None, None]
    assert online["cust_last_txn_unix_s"] == [last, None, None]
