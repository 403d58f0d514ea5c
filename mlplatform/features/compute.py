"""Feature definitions shared by training and serving: batch aggregates, request-time features, model input."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mlplatform.data.generator import N_CATEGORIES

DAY_S = 86_400
#: A customer's aggregates become visible this long after the transaction that updated them
#: (the freshness of the feature pipeline). It also keeps a transaction from seeing itself in a
#: point-in-time join.
CUSTOMER_FRESHNESS_S = 1.0
#: Labels (chargebacks) are trusted for merchant risk only once they are this old.
LABEL_MATURITY_DAYS = 7
#: Window of the merchant aggregates, in days.
MERCHANT_WINDOW_DAYS = 30
#: Prior fraud rate that merchant rates are shrunk towards (a merchant with few mature labels).
MERCHANT_PRIOR_RATE = 0.01
MERCHANT_PRIOR_WEIGHT = 20.0

CUSTOMER_WINDOWS_S: dict[str, int] = {"1h": 3_600, "24h": DAY_S, "7d": 7 * DAY_S, "30d": 30 * DAY_S}
#: A customer's row is not served once this old at the event's time (the customer feature view's TTL): the
#: customer then looks new, offline (the point-in-time join) and online (`expire_customers`) alike.
CUSTOMER_TTL_S = 30 * DAY_S

CATEGORY_SHARE_COLUMNS: tuple[str, ...] = tuple(f"cust_cat_share_{c}" for c in range(N_CATEGORIES))

#: Columns of the customer feature view (besides customer_id and event_timestamp).
CUSTOMER_FEATURES: tuple[str, ...] = (
    "cust_txn_count_1h",
    "cust_txn_count_24h",
    "cust_txn_count_7d",
    "cust_txn_count_30d",
    "cust_amount_avg_30d",
    "cust_amount_std_30d",
    "cust_last_txn_unix_s",
    *CATEGORY_SHARE_COLUMNS,
)
#: Columns of the merchant feature view (besides merchant_id and event_timestamp).
MERCHANT_FEATURES: tuple[str, ...] = (
    "merchant_category",
    "merchant_txn_count_30d",
    "merchant_amount_avg_30d",
    "merchant_fraud_rate_30d",
)
#: Fields the caller sends with each transaction (Feast request source).
REQUEST_FIELDS: tuple[str, ...] = ("amount", "event_unix_s")
#: Outputs of the on-demand (request-time) feature view.
ON_DEMAND_FEATURES: tuple[str, ...] = (
    "amount_log",
    "amount_log_ratio_30d",
    "amount_zscore_30d",
    "is_night",
    "category_share_30d",
    "log_seconds_since_last",
)
#: The model's features, in the order of the model input. The FeatureService names exactly these.
MODEL_CUSTOMER_FEATURES: tuple[str, ...] = (
    "cust_txn_count_1h",
    "cust_txn_count_24h",
    "cust_txn_count_7d",
    "cust_amount_avg_30d",
)
#: merchant_txn_count_30d stays in the merchant view but left the model: shuffling it cost the model no PR-AUC
#: (permutation importance -0.0003 +- 0.0032 on the 100k reference run, docs/adr/0022-model-quality-gates.md).
MODEL_MERCHANT_FEATURES: tuple[str, ...] = (
    "merchant_amount_avg_30d",
    "merchant_fraud_rate_30d",
)
MODEL_FEATURES: tuple[str, ...] = (
    *ON_DEMAND_FEATURES,
    *MODEL_CUSTOMER_FEATURES,
    *MODEL_MERCHANT_FEATURES,
)
#: Value used for a model feature Feast has no value for (an unknown or expired entity).
FEATURE_DEFAULTS: dict[str, float] = {
    "cust_txn_count_1h": 0.0,
    "cust_txn_count_24h": 0.0,
    "cust_txn_count_7d": 0.0,
    "cust_amount_avg_30d": 0.0,
    "merchant_amount_avg_30d": 0.0,
    "merchant_fraud_rate_30d": MERCHANT_PRIOR_RATE,
}


def expire_customers(online: dict[str, list[object]], event_unix_s: Sequence[float]) -> int:
    """Blank (None) the customer features of rows older than `CUSTOMER_TTL_S` at each event's time, in place.

    An online store returns a customer's latest row however old it is (Feast measures a view's TTL against the
    wall clock there), while the point-in-time join of the training sets leaves out a row older than the TTL at the
    event's time; this applies the training sets' rule to what the online store returned.

    Args:
        online: Feature name -> one value per transaction (None where the store had nothing), with the columns
            of `CUSTOMER_FEATURES`.
        event_unix_s: Each transaction's time.

    Returns:
        How many rows were expired.
    """
    last = online["cust_last_txn_unix_s"]
    expired = [
        i
        for i, (t, when) in enumerate(zip(last, event_unix_s, strict=True))
        if t is not None and when - (float(t) + CUSTOMER_FRESHNESS_S) > CUSTOMER_TTL_S
    ]
    for name in CUSTOMER_FEATURES:
        column = online[name]
        for i in expired:
            column[i] = None
    return len(expired)


def unix_seconds(ts: pd.Series) -> np.ndarray:
    """Timestamps (timezone-aware) as float seconds since the epoch, whatever their resolution."""
    return ((ts - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(np.float64)


def customer_features(transactions: pd.DataFrame) -> pd.DataFrame:
    """Each customer's spending aggregates after each of their transactions.

    One row per transaction, timestamped `CUSTOMER_FRESHNESS_S` after it, holding the aggregates
    over the trailing windows that end with (and include) that transaction. A point-in-time join at
    a later event therefore sees exactly the history before that event.

    Args:
        transactions: Raw transactions (`customer_id`, `merchant_category`, `amount`,
            `event_timestamp`); a category outside 0..N_CATEGORIES-1 (unknown) counts in no category's share.

    Returns:
        `customer_id`, `event_timestamp` and the columns of `CUSTOMER_FEATURES`.
    """
    tx = transactions.sort_values(["customer_id", "event_timestamp"], kind="stable")
    t = unix_seconds(tx["event_timestamp"])
    cust = tx["customer_id"].to_numpy(np.int64)
    amount = tx["amount"].to_numpy(np.float64)
    t0 = t.min() if len(t) else 0.0
    span = (t.max() - t0 if len(t) else 0.0) + 2 * max(CUSTOMER_WINDOWS_S.values()) + 1
    # One sorted key for (customer, time): a window's start never crosses into another customer.
    key = cust.astype(np.float64) * span + (t - t0 + max(CUSTOMER_WINDOWS_S.values()))
    n = len(tx)
    idx = np.arange(n)

    # Start of each row's trailing window, per window length (shared by every aggregate over it).
    window_start = {w: np.searchsorted(key, key - w, side="right") for w in set(CUSTOMER_WINDOWS_S.values())}

    def window_sum(values: np.ndarray, window_s: int) -> np.ndarray:
        """Each row's sum over its window, added up from the window's own values only.

        Not a difference of running sums: that carries the rounding of every row before the window (other
        customers' included), so the stream feature processor, which holds only its customers' recent rows,
        would get other low digits (a standard deviation of 0 came out as 1e-5).
        """
        padded = np.concatenate([values, np.zeros((1, *values.shape[1:]))])
        bounds = np.empty(2 * n, np.int64)
        bounds[0::2] = window_start[window_s]
        bounds[1::2] = idx + 1
        return np.add.reduceat(padded, bounds, axis=0)[0::2] if n else values[:0]

    out = pd.DataFrame({"customer_id": cust})
    for name, w in CUSTOMER_WINDOWS_S.items():
        out[f"cust_txn_count_{name}"] = idx + 1 - window_start[w]
    w30 = CUSTOMER_WINDOWS_S["30d"]
    count30 = out["cust_txn_count_30d"].to_numpy()
    s1 = window_sum(amount, w30)
    s2 = window_sum(amount**2, w30)
    mean = s1 / count30
    out["cust_amount_avg_30d"] = mean
    out["cust_amount_std_30d"] = np.sqrt(np.maximum(s2 / count30 - mean**2, 0.0))
    out["cust_last_txn_unix_s"] = t
    onehot = np.zeros((n, N_CATEGORIES))
    category = tx["merchant_category"].to_numpy(np.int64)
    known = (category >= 0) & (category < N_CATEGORIES)  # a stream event of an unknown merchant carries -1
    onehot[idx[known], category[known]] = 1.0
    shares = window_sum(onehot, w30) / count30[:, None]
    for c, col in enumerate(CATEGORY_SHARE_COLUMNS):
        out[col] = shares[:, c]
    out["event_timestamp"] = tx["event_timestamp"].to_numpy() + pd.Timedelta(seconds=CUSTOMER_FRESHNESS_S)
    for col in CUSTOMER_FEATURES:
        if col.startswith("cust_txn_count"):
            out[col] = out[col].round().astype(np.int64)
    # Transactions of one customer at the same instant: keep the row that includes them all, so a
    # point-in-time join never has to choose between two rows with one timestamp (it would pick
    # either, and training sets would differ between runs).
    out = out.drop_duplicates(["customer_id", "event_timestamp"], keep="last")
    return out[["customer_id", "event_timestamp", *CUSTOMER_FEATURES]].reset_index(drop=True)


def merchant_features(transactions: pd.DataFrame) -> pd.DataFrame:
    """Daily snapshots of each merchant's volume and risk, computed only from the past.

    The snapshot at midnight D covers transactions of the `MERCHANT_WINDOW_DAYS` days before D for
    volume and amount, and for the fraud rate only labels at least `LABEL_MATURITY_DAYS` old
    (chargebacks arrive late: a fresher window would use labels nobody had yet). Rates are shrunk
    towards `MERCHANT_PRIOR_RATE` so that a merchant with few labels is not scored 0 or 1.

    Args:
        transactions: Raw transactions (`merchant_id`, `merchant_category`, `amount`, `is_fraud`,
            `event_timestamp`).

    Returns:
        `merchant_id`, `event_timestamp` and the columns of `MERCHANT_FEATURES`.
    """
    ts = transactions["event_timestamp"]
    day0 = ts.min().floor("D")
    day = ((ts - day0) // pd.Timedelta(days=1)).to_numpy(np.int64)
    n_days = int(day.max()) + 2  # snapshots up to the midnight after the last transaction
    merch_ids, merch = np.unique(transactions["merchant_id"].to_numpy(np.int64), return_inverse=True)
    m = len(merch_ids)
    count = np.zeros((m, n_days))
    amount = np.zeros((m, n_days))
    fraud = np.zeros((m, n_days))
    np.add.at(count, (merch, day), 1.0)
    np.add.at(amount, (merch, day), transactions["amount"].to_numpy(np.float64))
    np.add.at(fraud, (merch, day), transactions["is_fraud"].to_numpy(np.float64))

    def trailing(x: np.ndarray, end_lag: int) -> np.ndarray:
        """Sum over days [D - end_lag - window, D - end_lag) for each snapshot day D."""
        c = np.concatenate([np.zeros((m, 1)), np.cumsum(x, axis=1)], axis=1)
        d = np.arange(n_days)
        hi = np.clip(d - end_lag, 0, n_days)
        lo = np.clip(d - end_lag - MERCHANT_WINDOW_DAYS, 0, n_days)
        return c[:, hi] - c[:, lo]

    vol = trailing(count, 0)
    amt = trailing(amount, 0)
    mature_n = trailing(count, LABEL_MATURITY_DAYS)
    mature_f = trailing(fraud, LABEL_MATURITY_DAYS)
    rate = (mature_f + MERCHANT_PRIOR_RATE * MERCHANT_PRIOR_WEIGHT) / (mature_n + MERCHANT_PRIOR_WEIGHT)
    category = transactions.groupby("merchant_id")["merchant_category"].first().reindex(merch_ids).to_numpy()
    days = pd.DatetimeIndex([day0 + pd.Timedelta(days=int(i)) for i in range(n_days)])
    out = pd.DataFrame(
        {
            "merchant_id": np.repeat(merch_ids, n_days),
            "event_timestamp": np.tile(days, m),
            "merchant_category": np.repeat(category, n_days).astype(np.int64),
            "merchant_txn_count_30d": vol.ravel().round().astype(np.int64),
            "merchant_amount_avg_30d": np.where(vol > 0, amt / np.maximum(vol, 1), 0.0).ravel(),
            "merchant_fraud_rate_30d": rate.ravel(),
        }
    )
    return out


#: Inputs of the on-demand feature view besides the request fields.
ON_DEMAND_INPUTS: tuple[str, ...] = (
    "cust_amount_avg_30d",
    "cust_amount_std_30d",
    "cust_last_txn_unix_s",
    "merchant_category",
    *CATEGORY_SHARE_COLUMNS,
)


def _f64(values: object) -> np.ndarray:
    """Values as float64, None and non-numbers as NaN (what `pd.to_numeric(errors="coerce")` gives)."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(np.float64)


def _fill(values: np.ndarray, default: float | np.ndarray) -> np.ndarray:
    """NaN replaced by `default` (infinities kept, like `Series.fillna`; an array of defaults: one per column)."""
    return np.where(np.isnan(values), default, values)


def on_demand_arrays(inputs: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Request-time features on column arrays: the one implementation behind `on_demand_features`.

    The online transformer calls it directly (a pandas frame per request costs milliseconds); the
    offline store calls it through `on_demand_features`. Missing history (an unknown customer,
    expired features) gives neutral values rather than NaN.

    Args:
        inputs: Column name -> values, for `REQUEST_FIELDS` and `ON_DEMAND_INPUTS` (None = missing).

    Returns:
        The columns of `ON_DEMAND_FEATURES`, float64.
    """
    amount = _f64(inputs["amount"])
    now = _f64(inputs["event_unix_s"])
    avg = _f64(inputs["cust_amount_avg_30d"])
    std = _f64(inputs["cust_amount_std_30d"])
    last = _f64(inputs["cust_last_txn_unix_s"])
    known = ~np.isnan(avg) & (avg > 0)
    avg_f = np.where(known, avg, amount)
    std_f = _fill(np.where(known, std, 0.0), 0.0)
    category = _f64(inputs["merchant_category"])
    shares = _fill(np.column_stack([_f64(inputs[c]) for c in CATEGORY_SHARE_COLUMNS]), 0.0)
    cat_idx = np.where(np.isnan(category), -1, category).astype(np.int64)
    valid_cat = (cat_idx >= 0) & (cat_idx < N_CATEGORIES)
    share = np.where(valid_cat, shares[np.arange(len(cat_idx)), np.clip(cat_idx, 0, N_CATEGORIES - 1)], 0.0)
    since = np.clip(np.where(np.isnan(last), 30.0 * DAY_S, now - last), 0.0, None)
    hour = np.floor((now % DAY_S) / 3_600)
    return {
        "amount_log": np.log1p(np.clip(amount, 0.0, None)),
        "amount_log_ratio_30d": np.log((amount + 1.0) / (avg_f + 1.0)),
        "amount_zscore_30d": np.clip((amount - avg_f) / (std_f + 0.1 * avg_f + 1.0), -50, 50),
        "is_night": (hour < 6).astype(np.float64),
        "category_share_30d": share.astype(np.float64),
        "log_seconds_since_last": np.log1p(since),
    }


def on_demand_features(inputs: pd.DataFrame) -> pd.DataFrame:
    """Request-time features: the transaction against the customer's history and the merchant.

    This is the body of the Feast on-demand feature view, so training (offline store) and serving
    (online store, through `on_demand_arrays`) compute it with the same code.

    Args:
        inputs: The request fields (`REQUEST_FIELDS`) plus `ON_DEMAND_INPUTS`.

    Returns:
        The columns of `ON_DEMAND_FEATURES`, float64, one row per input row.
    """
    columns = {
        c: pd.to_numeric(inputs[c], errors="coerce").to_numpy(np.float64) for c in (*REQUEST_FIELDS, *ON_DEMAND_INPUTS)
    }
    return pd.DataFrame(on_demand_arrays(columns), index=inputs.index).astype("float64")


def model_input_arrays(
    columns: Mapping[str, object], feature_names: Sequence[str] = MODEL_FEATURES, dtype: type = np.float32
) -> np.ndarray:
    """The model's input matrix from column arrays: features in model order, missing values set to defaults.

    float32 is what the model computes in; serving keeps float64 so that its prediction log records the exact
    values (the predictor casts them to float32 as the model's input, giving the same numbers).

    Raises:
        KeyError: When a model feature is absent from `columns`.
    """
    missing = [f for f in feature_names if f not in columns]
    if missing:
        raise KeyError(f"model features missing from the feature frame: {missing}")
    if not feature_names:
        return np.empty((0, 0), dtype)
    x = np.column_stack([_f64(columns[f]) for f in feature_names])  # NaN filled per column in one pass
    return _fill(x, np.array([FEATURE_DEFAULTS.get(f, 0.0) for f in feature_names])).astype(dtype)


def model_input(frame: pd.DataFrame, feature_names: Sequence[str] = MODEL_FEATURES) -> np.ndarray:
    """The model's input matrix: the features in model order, missing values set to their defaults.

    Raises:
        KeyError: When a model feature is absent from `frame`.
    """
    missing = [f for f in feature_names if f not in frame.columns]
    if missing:
        raise KeyError(f"model features missing from the feature frame: {missing}")
    x = model_input_arrays(
        {f: pd.to_numeric(frame[f], errors="coerce").to_numpy(np.float64) for f in feature_names}, feature_names
    )
    return x if feature_names else np.empty((len(frame), 0), np.float32)


def request_fields(transactions: pd.DataFrame) -> pd.DataFrame:
    """The request fields for transactions (what a client sends; what training replays)."""
    return pd.DataFrame(
        {
            "amount": transactions["amount"].astype("float64"),
            "event_unix_s": unix_seconds(transactions["event_timestamp"]),
        },
        index=transactions.index,
    )
