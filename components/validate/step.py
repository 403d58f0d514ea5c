"""Validate data: schema, ranges, nulls, label balance, and shift against the champion's reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform import registry
from mlplatform.errors import DataValidationError
from mlplatform.features.compute import MODEL_FEATURES, ON_DEMAND_FEATURES, REQUEST_FIELDS
from mlplatform.monitoring.stats import psi
from mlplatform.settings import PlatformSettings

#: (low, high) inclusive bounds of columns with a known valid range.
RANGES: dict[str, tuple[float, float]] = {
    "amount": (0.01, 1_000_000.0),
    "is_fraud": (0, 1),
    "is_night": (0, 1),
    "category_share_30d": (0.0, 1.0),
    "merchant_fraud_rate_30d": (0.0, 1.0),
    "cust_txn_count_1h": (0, 10_000),
    "cust_txn_count_24h": (0, 100_000),
    "cust_txn_count_7d": (0, 1_000_000),
    "cust_amount_avg_30d": (0.0, 1_000_000.0),
    "merchant_txn_count_30d": (0, 100_000_000),
    "merchant_amount_avg_30d": (0.0, 1_000_000.0),
    "log_seconds_since_last": (0.0, 30.0),
}
#: Columns that must never be null.
NOT_NULL = (
    "transaction_id",
    "customer_id",
    "merchant_id",
    "event_timestamp",
    "is_fraud",
    *REQUEST_FIELDS,
    *ON_DEMAND_FEATURES,
)


@dataclass(frozen=True)
class ValidationRules:
    """Thresholds of the data validation.

    Attributes:
        max_null_rate: Largest share of nulls in a batch (store) feature; unknown entities give nulls.
        min_fraud_rate: Lowest acceptable share of fraud in each split.
        max_fraud_rate: Highest acceptable share of fraud in each split.
        min_rows: Fewest rows per split.
        max_feature_psi: Largest PSI of a feature against the champion's training reference.
        max_missing_rate_change: Largest change of a feature's missing rate against the reference.
    """

    max_null_rate: float = 0.2
    min_fraud_rate: float = 0.002
    max_fraud_rate: float = 0.2
    min_rows: int = 100
    max_feature_psi: float = 1.0
    max_missing_rate_change: float = 0.1

    @classmethod
    def from_settings(cls, settings: PlatformSettings) -> ValidationRules:
        """The defaults with the thresholds PlatformSettings carries (MLPLATFORM_VALIDATE_*)."""
        return cls(max_feature_psi=settings.validate_max_feature_psi)


@dataclass
class ValidationReport:
    """Checks run and their findings; `warnings` are findings that do not fail the run."""

    checks: int = 0
    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    feature_psi: dict[str, float] = field(default_factory=dict)
    fraud_rates: dict[str, float] = field(default_factory=dict)


def validate_split(name: str, frame: pd.DataFrame, rules: ValidationRules, report: ValidationReport) -> None:
    """Check one split; findings go into `report.violations` as 'split.column: rule' messages."""

    def check(ok: bool, msg: str) -> None:
        report.checks += 1
        if not ok:
            report.violations.append(f"{name}.{msg}")

    required = [
        "transaction_id",
        "customer_id",
        "merchant_id",
        "event_timestamp",
        "is_fraud",
        *REQUEST_FIELDS,
        *MODEL_FEATURES,
    ]
    for col in required:
        check(col in frame.columns, f"{col}: required column is missing (schema)")
    check(len(frame) >= rules.min_rows, f"<rows>: {len(frame)} rows, fewer than {rules.min_rows}")
    for col in required:
        if col not in frame.columns or col in ("transaction_id", "event_timestamp"):
            continue
        values = pd.to_numeric(frame[col], errors="coerce")
        check(
            not (values.isna() & frame[col].notna()).any(),
            f"{col}: non-numeric values (type)",
        )
        v = values.to_numpy(np.float64)
        check(not np.isinf(v).any(), f"{col}: infinite values (range)")
        null_rate = float(np.isnan(v).mean()) if len(v) else 0.0
        if col in NOT_NULL:
            check(null_rate == 0.0, f"{col}: {null_rate:.2%} nulls, none allowed (nulls)")
        else:
            check(
                null_rate <= rules.max_null_rate,
                f"{col}: {null_rate:.2%} nulls, above {rules.max_null_rate:.0%} (nulls)",
            )
        if col in RANGES:
            lo, hi = RANGES[col]
            finite = v[np.isfinite(v)]
            bad = int(((finite < lo) | (finite > hi)).sum())
            check(bad == 0, f"{col}: {bad} value(s) outside [{lo}, {hi}] (range)")
    if "is_fraud" in frame.columns and len(frame):
        labels = pd.to_numeric(frame["is_fraud"], errors="coerce")
        check(labels.isin([0, 1]).all(), "is_fraud: labels other than 0/1 (schema)")
        rate = float(labels.mean())
        report.fraud_rates[name] = rate
        check(
            rules.min_fraud_rate <= rate <= rules.max_fraud_rate,
            f"is_fraud: fraud rate {rate:.4f} outside [{rules.min_fraud_rate}, {rules.max_fraud_rate}] (label balance)",
        )


def compare_with_reference(
    frame: pd.DataFrame,
    reference: dict[str, Any],
    rules: ValidationRules,
    report: ValidationReport,
    drift_expected: bool = False,
) -> None:
    """Shift of the training features against the champion's training reference statistics.

    With `drift_expected` (an alert started the run: the data moved and the run retrains on it) a PSI
    above `max_feature_psi` is a warning, not a violation; missing-rate changes still fail.
    """
    for col, ref in reference.get("features", {}).items():
        if col not in frame.columns:
            continue
        v = pd.to_numeric(frame[col], errors="coerce").to_numpy(np.float64)
        value = psi(ref, v)
        report.feature_psi[col] = value
        report.checks += 2
        if np.isfinite(value) and value > rules.max_feature_psi:
            finding = f"train.{col}: PSI {value:.3f} against the champion's reference exceeds {rules.max_feature_psi}"
            if drift_expected:
                report.warnings.append(f"{finding} (drift, expected: an alert started this run)")
            else:
                report.violations.append(f"{finding} (drift)")
        missing = float(np.isnan(v).mean())
        if abs(missing - ref.get("missing_rate", 0.0)) > rules.max_missing_rate_change:
            report.violations.append(
                f"train.{col}: missing rate {missing:.2%} vs reference {ref.get('missing_rate', 0.0):.2%} "
                f"changed by more than {rules.max_missing_rate_change:.0%} (missing values)"
            )


def run_validate(
    splits: dict[str, Path],
    reference: dict[str, Any] | None,
    rules: ValidationRules | None = None,
    trigger: str = "manual",
) -> ValidationReport:
    """Validate the training set splits.

    Args:
        splits: Split name -> Parquet path (train, validation, test).
        reference: The champion's reference statistics, None when there is no champion.
        rules: Thresholds (defaults when None).
        trigger: Why the run was started (mlplatform.params); `alert:...` makes feature drift against the
            champion a warning: the alert said the data moved, and retraining on it is the point.

    Raises:
        DataValidationError: Listing every violation, each naming the split, the column and the rule.
    """
    rules = rules or ValidationRules()
    report = ValidationReport()
    frames = {name: pd.read_parquet(path) for name, path in splits.items()}
    for name, frame in frames.items():
        validate_split(name, frame, rules, report)
    if reference is not None and "train" in frames:
        compare_with_reference(frames["train"], reference, rules, report, drift_expected=trigger.startswith("alert:"))
    if report.violations:
        raise DataValidationError(report.violations)
    return report


def champion_reference(settings: PlatformSettings) -> dict[str, Any] | None:
    """The reference statistics saved with the current champion, None when there is no champion."""
    from mlplatform.training.model import load_reference_stats  # torch: seconds to import, only when used

    registry.configure(settings)
    champion = registry.get_alias(settings.registered_model_name, registry.CHAMPION)
    if champion is None:
        return None
    return load_reference_stats(registry.download_version(champion))
