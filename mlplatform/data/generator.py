"""Generator of realistic card transactions with fraud, the raw source of the reference workload."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

#: Merchant categories; the index is the integer code stored in the data.
CATEGORIES: tuple[str, ...] = (
    "grocery",
    "restaurant",
    "fuel",
    "travel",
    "online_retail",
    "electronics",
    "jewelry",
    "gambling",
)
N_CATEGORIES = len(CATEGORIES)
# Typical basket size per category (median amount, in currency units).
_CATEGORY_SCALE = np.array([45.0, 35.0, 55.0, 320.0, 80.0, 260.0, 400.0, 90.0])
# Categories fraudsters favour (cashable goods, online).
_FRAUD_CATEGORIES = np.array([4, 5, 6, 7])
# Under drift, fraud moves to small "card testing" purchases at everyday merchants.
_DRIFT_FRAUD_CATEGORIES = np.array([0, 1, 2, 4])

#: Synthetic customer segments (the card type), for inclusion checks only: never a model input, and assigned
#: independently of behaviour, so a model that treats customers alike scores every segment alike.
SEGMENTS: tuple[str, ...] = ("debit", "credit", "prepaid")
#: Share of customers per segment, in the order of SEGMENTS.
SEGMENT_SHARES: tuple[float, ...] = (0.55, 0.35, 0.10)

#: Columns of the raw transactions table, in order.
TRANSACTION_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "customer_id",
    "merchant_id",
    "merchant_category",
    "amount",
    "event_timestamp",
    "is_fraud",
    "label_timestamp",
)


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate.

    Attributes:
        n_transactions: Number of transactions (fraudulent ones included).
        n_days: Length of the period the transactions span, in days.
        seed: Random seed; the same config always gives the same data.
        fraud_rate: Target share of fraudulent transactions (about 1–3 % is realistic).
        drift: 0 for the reference distribution, up to 1 for a fully shifted one (higher
            amounts, more night activity, fraud moving to small purchases at everyday merchants).
        start: First day of the period (UTC midnight).
        customers_per_transaction: Customers generated per transaction (min 50 customers).
        merchants_per_transaction: Merchants generated per transaction (min 20 merchants).
    """

    n_transactions: int = 100_000
    n_days: int = 60
    seed: int = 42
    fraud_rate: float = 0.02
    drift: float = 0.0
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    customers_per_transaction: float = 1 / 40
    merchants_per_transaction: float = 1 / 200

    def __post_init__(self) -> None:
        if self.n_transactions < 1_000:
            raise ValueError(f"n_transactions must be at least 1000, got {self.n_transactions}")
        if self.n_days < 1:
            raise ValueError(f"n_days must be at least 1, got {self.n_days}")
        if not 0.001 <= self.fraud_rate <= 0.2:
            raise ValueError(f"fraud_rate must be within [0.001, 0.2], got {self.fraud_rate}")
        if not 0.0 <= self.drift <= 1.0:
            raise ValueError(f"drift must be within [0, 1], got {self.drift}")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")


def _customers(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    # Each customer shops mostly in two or three categories and has a stable basket size.
    prefs = rng.dirichlet(np.full(N_CATEGORIES, 0.3), size=n)
    # Everyday categories are more common than jewelry or gambling for most people.
    prefs *= np.array([3.0, 2.5, 2.0, 0.6, 1.5, 0.5, 0.15, 0.2])
    prefs /= prefs.sum(axis=1, keepdims=True)
    return {
        "prefs": prefs,
        "amount_factor": rng.lognormal(0.0, 0.5, n),
        "activity": rng.gamma(2.0, 1.0, n),
        # Share of a customer's legitimate purchases made at night (00:00-05:59).
        "night_owl": rng.beta(1.0, 25.0, n),
    }


def _merchants(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    category = rng.choice(N_CATEGORIES, size=n, p=np.array([18, 16, 10, 6, 20, 12, 8, 10]) / 100)
    # Ensure every category has at least one merchant.
    category[:N_CATEGORIES] = np.arange(N_CATEGORIES)
    risky = rng.random(n) < 0.04
    return {"category": category, "risky": risky}


def _hours(rng: np.random.Generator, n: int, night_share: np.ndarray) -> np.ndarray:
    """Seconds within the day: night (0-6h) with the given probability, else a daytime curve."""
    night = rng.random(n) < night_share
    day_seconds = rng.normal(14.5 * 3600, 3.5 * 3600, n)
    # Reflect the tails into 06:00-24:00 (clipping would pile transactions up at exactly 06:00).
    day_seconds = np.where(day_seconds < 6 * 3600, 12 * 3600 - day_seconds, day_seconds)
    day_seconds = np.where(day_seconds >= 24 * 3600, 48 * 3600 - day_seconds - 1, day_seconds)
    day_seconds = np.clip(day_seconds, 6 * 3600, 24 * 3600 - 1)
    night_seconds = rng.uniform(0, 6 * 3600, n)
    return np.where(night, night_seconds, day_seconds)


def _pick_merchants(
    rng: np.random.Generator, categories: np.ndarray, merchants: dict[str, np.ndarray], risky: bool
) -> np.ndarray:
    """A merchant in each requested category (a risky one where `risky`, when the category has one)."""
    out = np.empty(len(categories), dtype=np.int64)
    for c in range(N_CATEGORIES):
        idx = np.flatnonzero(categories == c)
        if idx.size == 0:
            continue
        pool = np.flatnonzero((merchants["category"] == c) & (merchants["risky"] if risky else True))
        if pool.size == 0:
            pool = np.flatnonzero(merchants["category"] == c)
        # Popularity follows a power law: a few merchants take most of the traffic.
        weights = 1.0 / np.arange(1, pool.size + 1) ** 0.8
        out[idx] = rng.choice(pool, size=idx.size, p=weights / weights.sum())
    return out


def generate_transactions(config: GeneratorConfig) -> pd.DataFrame:
    """Generate a table of card transactions with fraud labels.

    Legitimate purchases follow each customer's stable traits (favourite categories, basket size,
    daytime habits). Fraud comes in short bursts on a victim's card, each burst showing a random
    subset of the signals: amount far above the customer's usual, a category the customer rarely
    uses, night hours, a risky (compromised) merchant. Legitimate purchases show each signal now and
    then too, so a model has to combine features to separate the two.

    Args:
        config: What to generate.

    Returns:
        One row per transaction with the columns of `TRANSACTION_COLUMNS`, sorted by time. Labels
        become known after a delay (`label_timestamp`), as chargebacks do.
    """
    rng = np.random.default_rng(config.seed)
    d = config.drift
    n_cust = max(50, int(config.n_transactions * config.customers_per_transaction))
    n_merch = max(20, int(config.n_transactions * config.merchants_per_transaction))
    customers = _customers(rng, n_cust)
    merchants = _merchants(rng, n_merch)
    period_s = config.n_days * 86_400

    # Fraud arrives in bursts of 1-4 transactions; size the number of bursts to hit the rate.
    burst_len = rng.geometric(0.55, size=int(config.n_transactions * config.fraud_rate) + 1)
    burst_len = np.minimum(burst_len, 4)
    target = config.n_transactions * config.fraud_rate
    burst_len = burst_len[: np.searchsorted(np.cumsum(burst_len), target) + 1]
    n_fraud = int(burst_len.sum())
    n_legit = config.n_transactions - n_fraud

    # --- legitimate purchases
    cust = rng.choice(n_cust, size=n_legit, p=customers["activity"] / customers["activity"].sum())
    # Inverse-CDF sampling of each customer's favourite categories.
    cdf = customers["prefs"].cumsum(axis=1)[cust]
    cat = (rng.random(n_legit)[:, None] > cdf).sum(axis=1).clip(0, N_CATEGORIES - 1)
    # Now and then a customer buys something outside their habits.
    off = rng.random(n_legit) < 0.03
    cat = np.where(off, rng.integers(0, N_CATEGORIES, n_legit), cat)
    merch = _pick_merchants(rng, cat, merchants, risky=False)
    scale = _CATEGORY_SCALE[cat] * customers["amount_factor"][cust] * (1.0 + 0.6 * d)
    amount = rng.lognormal(np.log(scale), 0.55)
    # Occasional big legitimate purchases (a holiday, a new phone).
    big = rng.random(n_legit) < 0.01
    amount = np.where(big, amount * rng.uniform(3.0, 8.0, n_legit), amount)
    day = rng.integers(0, config.n_days, n_legit)
    night_share = np.clip(customers["night_owl"][cust] * (1.0 + 3.0 * d), 0.0, 0.9)
    ts = day * 86_400 + _hours(rng, n_legit, night_share)

    # --- fraud bursts
    n_bursts = burst_len.size
    victim = rng.choice(n_cust, size=n_bursts)
    sig_amount = rng.random(n_bursts) < 0.55
    sig_category = rng.random(n_bursts) < 0.55
    sig_night = rng.random(n_bursts) < 0.45
    sig_risky = rng.random(n_bursts) < 0.40
    # Unusual category: the fraud category the victim uses least; otherwise one they use.
    victim_prefs = customers["prefs"][victim]
    rare_ref = _FRAUD_CATEGORIES[np.argmin(victim_prefs[:, _FRAUD_CATEGORIES], axis=1)]
    rare_drift = _DRIFT_FRAUD_CATEGORIES[np.argmin(victim_prefs[:, _DRIFT_FRAUD_CATEGORIES], axis=1)]
    rare_cat = np.where(rng.random(n_bursts) < d, rare_drift, rare_ref)
    usual_cat = np.argmax(victim_prefs, axis=1)
    burst_cat = np.where(sig_category, rare_cat, usual_cat)
    burst_day = rng.integers(0, config.n_days, n_bursts)
    burst_tod = _hours(rng, n_bursts, np.where(sig_night, 0.97, 0.04))
    burst_t0 = burst_day * 86_400 + burst_tod

    rep = np.repeat(np.arange(n_bursts), burst_len)
    within = np.concatenate([np.arange(k) for k in burst_len]) if n_bursts else np.array([], int)
    f_cust = victim[rep]
    f_cat = burst_cat[rep]
    # Within a burst the merchants vary but stay in the chosen category.
    f_merch_risky = _pick_merchants(rng, f_cat, merchants, risky=True)
    f_merch_plain = _pick_merchants(rng, f_cat, merchants, risky=False)
    f_merch = np.where(sig_risky[rep], f_merch_risky, f_merch_plain)
    f_scale = _CATEGORY_SCALE[f_cat] * customers["amount_factor"][f_cust]
    f_mult = np.where(sig_amount[rep], rng.uniform(4.0, 12.0, rep.size), rng.uniform(0.7, 1.5, rep.size))
    # Drifted fraud: card testing with small amounts.
    f_mult = f_mult * (1.0 - 0.8 * d)
    f_amount = rng.lognormal(np.log(f_scale * f_mult), 0.35)
    f_ts = burst_t0[rep] + within * rng.uniform(30, 900, rep.size)

    df = pd.DataFrame(
        {
            "customer_id": np.concatenate([cust, f_cust]).astype(np.int64),
            "merchant_id": np.concatenate([merch, f_merch]).astype(np.int64),
            "merchant_category": np.concatenate([cat, f_cat]).astype(np.int64),
            "amount": np.round(np.concatenate([amount, f_amount]), 2).clip(0.5, 50_000.0),
            "ts": np.clip(np.concatenate([ts, f_ts]), 0, period_s - 1),
            "is_fraud": np.concatenate([np.zeros(n_legit, np.int64), np.ones(rep.size, np.int64)]),
        }
    )
    # Chargebacks arrive 1-30 days later; most within a week or two.
    label_delay = rng.gamma(2.0, 3.0, len(df)).clip(1.0, 30.0) * 86_400
    start_ns = pd.Timestamp(config.start).value
    # Microsecond resolution, as card networks and Feast's stores keep it.
    df["event_timestamp"] = pd.to_datetime(start_ns + (df["ts"] * 1e6).astype(np.int64) * 1000, utc=True)
    df["label_timestamp"] = pd.to_datetime(
        start_ns + ((df["ts"] + label_delay) * 1e6).astype(np.int64) * 1000, utc=True
    )
    df = df.sort_values(["event_timestamp", "customer_id"], kind="stable").reset_index(drop=True)
    df["transaction_id"] = [f"tx-{config.seed}-{i:08d}" for i in range(len(df))]
    return df[list(TRANSACTION_COLUMNS)]


def customer_segments(customer_id: np.ndarray | pd.Series) -> np.ndarray:
    """The synthetic segment (SEGMENTS) of each customer: a pure function of the customer id (splitmix64 hash),
    the same in every process, stream and dataset, with the shares of SEGMENT_SHARES.

    It is documented as synthetic: the generator draws no behaviour from it, and no feature reads it.
    """
    x = np.asarray(customer_id, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    unit = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.asarray(SEGMENTS, dtype=object)[np.searchsorted(np.cumsum(SEGMENT_SHARES)[:-1], unit, side="right")]


def write_transactions(df: pd.DataFrame, path: Path) -> Path:
    """Write transactions as Parquet (the raw source Feast features are computed from)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return path


def period_end(config: GeneratorConfig) -> datetime:
    """The end (exclusive) of the generated period."""
    return config.start + timedelta(days=config.n_days)
