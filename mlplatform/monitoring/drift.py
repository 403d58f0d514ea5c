"""Drift, training-serving skew and quality of one model version's window: pure computation, no I/O."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mlplatform.monitoring.stats import bin_proportions, ks_statistic, psi, standardized_mean_difference

#: PSI at or above this is a moderate shift (the report marks it "watch").
PSI_WARN = 0.1
#: PSI at or above this is a significant shift (the report marks it "drift"; the alert threshold).
PSI_ALERT = 0.25
#: KS distance at or above this is a significant shift of a continuous feature or the score.
KS_ALERT = 0.2
#: |standardized mean difference| at or above this is a training-serving skew worth a look.
SKEW_ALERT = 0.5
#: A feature whose reference has at least this many distinct quantile bins counts as continuous (gets KS).
CONTINUOUS_MIN_BINS = 5


@dataclass(frozen=True)
class Window:
    """A time window (start, end], in seconds since the epoch."""

    start_unix_s: float
    end_unix_s: float

    @classmethod
    def ending(cls, end_unix_s: float, seconds: float) -> Window:
        """The window of `seconds` that ends at `end_unix_s`."""
        return cls(end_unix_s - seconds, end_unix_s)

    def contains(self, t: float) -> bool:
        """Whether `t` lies in (start, end]."""
        return self.start_unix_s < t <= self.end_unix_s

    def label(self) -> str:
        """Human-readable 'start .. end' in UTC."""
        return f"{_iso(self.start_unix_s)} .. {_iso(self.end_unix_s)}"


@dataclass(frozen=True)
class FeatureDrift:
    """One feature of one version in one window, against the training reference.

    Attributes:
        feature: Feature name.
        psi: Population stability index over the reference bins (NaN without finite live values).
        ks: KS distance at the reference bin edges; None for a discrete feature.
        missing_rate: Share of live values absent, null, NaN or infinite.
        skew: Standardized mean difference of live vs training values (signed).
        reference_mean: Training mean.
        live_mean: Mean of the finite live values (NaN when none).
        continuous: Whether the feature counts as continuous (has KS).
        reference_bins: The reference's bin proportions.
        live_bins: The live values' proportions over the same bins.
    """

    feature: str
    psi: float
    ks: float | None
    missing_rate: float
    skew: float
    reference_mean: float | None
    live_mean: float
    continuous: bool
    reference_bins: list[float] = field(default_factory=list, repr=False)
    live_bins: list[float] = field(default_factory=list, repr=False)

    @property
    def status(self) -> str:
        """ok, watch (PSI >= PSI_WARN) or drift (PSI >= PSI_ALERT, or KS >= KS_ALERT)."""
        return drift_status(self.psi, self.ks)


@dataclass(frozen=True)
class Quality:
    """Quality of one version's labelled predictions in the quality window.

    Attributes:
        labelled: Predictions in the window with a known label.
        positives: Of those, labelled fraud.
        precision: Precision at the operating threshold; None below the minimum count or without a flagged one.
        recall: Recall at the operating threshold; None below the minimum count or without a fraud label.
        pr_auc: Average precision; None below the minimum count or with one class only.
    """

    labelled: int
    positives: int
    precision: float | None = None
    recall: float | None = None
    pr_auc: float | None = None


@dataclass(frozen=True)
class ModelReference:
    """What the monitor needs of a model version's artifact.

    Attributes:
        model_name: Registered model name.
        model_version: Registry version.
        stats: The reference statistics (`stats.reference_stats` layout).
        threshold: Operating threshold of the version.
        created_unix_s: When the version was registered (None when unknown).
        source: The artifact folder read.
    """

    model_name: str
    model_version: str
    stats: dict[str, Any]
    threshold: float
    created_unix_s: float | None
    source: Path


@dataclass
class VersionReport:
    """Drift and quality of one model version in one window.

    Attributes:
        model_name: Registered model name.
        model_version: Registry version.
        predictions: Predictions of the version in the drift window.
        features: Per-feature drift (empty when skipped or failed).
        score_psi: PSI of the score (None when not computed).
        score_ks: KS of the score (None when not computed).
        score_reference_bins: Reference score bin proportions.
        score_live_bins: Live score proportions over the same bins.
        quality: Quality over the quality window.
        model_age_seconds: Window end minus the version's registration time.
        skipped: Why drift was not computed (too few predictions), or None.
        error: What went wrong (unknown version, no reference), or None.
    """

    model_name: str
    model_version: str
    predictions: int
    features: list[FeatureDrift] = field(default_factory=list)
    score_psi: float | None = None
    score_ks: float | None = None
    score_reference_bins: list[float] = field(default_factory=list, repr=False)
    score_live_bins: list[float] = field(default_factory=list, repr=False)
    quality: Quality | None = None
    model_age_seconds: float | None = None
    skipped: str | None = None
    error: str | None = None

    @property
    def outcome(self) -> str:
        """ok, skipped (too few predictions) or error."""
        return "error" if self.error else "skipped" if self.skipped else "ok"

    @property
    def has_drift_values(self) -> bool:
        """Whether drift was computed for this version."""
        return self.outcome == "ok" and bool(self.features)


@dataclass
class MonitorResult:
    """One evaluation: every version seen in the drift or quality window.

    Attributes:
        window: The drift window.
        quality_window: The quality window (ends with the drift window).
        versions: One report per (model name, version), ordered by version.
        evaluated_at_unix_s: When it was computed.
    """

    window: Window
    quality_window: Window
    versions: list[VersionReport]
    evaluated_at_unix_s: float


# ----------------------------------------------------------------------------------------------- math


def drift_status(psi_value: float | None, ks_value: float | None = None) -> str:
    """ok, watch or drift for a PSI (and optional KS) value."""
    p = psi_value if psi_value is not None and math.isfinite(psi_value) else 0.0
    k = ks_value if ks_value is not None and math.isfinite(ks_value) else 0.0
    if p >= PSI_ALERT or k >= KS_ALERT:
        return "drift"
    return "watch" if p >= PSI_WARN else "ok"


def is_continuous(reference_column: Mapping[str, Any]) -> bool:
    """Whether a reference column has at least `CONTINUOUS_MIN_BINS` distinct quantile bins."""
    return len(reference_column.get("proportions") or []) >= CONTINUOUS_MIN_BINS


def missing_rate(values: np.ndarray) -> float:
    """Share of values that are NaN or infinite (absent values arrive as NaN); 0 for an empty array."""
    v = np.asarray(values, dtype=np.float64)
    return float((~np.isfinite(v)).mean()) if v.size else 0.0


def feature_drift(feature: str, reference_column: Mapping[str, Any], values: np.ndarray) -> FeatureDrift:
    """Drift, missing rate and skew of one feature's live values against its reference column."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    continuous = is_continuous(reference_column)
    return FeatureDrift(
        feature=feature,
        psi=psi(reference_column, v),
        ks=ks_statistic(reference_column, v) if continuous else None,
        missing_rate=missing_rate(v),
        skew=standardized_mean_difference(reference_column, v),
        reference_mean=reference_column.get("mean"),
        live_mean=float(finite.mean()) if finite.size else float("nan"),
        continuous=continuous,
        reference_bins=list(reference_column.get("proportions") or []),
        live_bins=bin_proportions(reference_column, v).tolist(),
    )


def _number(value: Any) -> float:
    """A logged value as float; None and non-numbers as NaN."""
    if value is None or isinstance(value, bool):
        return float("nan") if value is None else float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def live_columns(records: Sequence[Mapping[str, Any]], feature_names: Iterable[str]) -> dict[str, np.ndarray]:
    """Each feature's logged values across `records` (NaN where a record lacks it or holds null)."""
    return {
        f: np.fromiter((_number((r.get("features") or {}).get(f)) for r in records), np.float64, len(records))
        for f in feature_names
    }


def quality_of(pairs: Sequence[tuple[Mapping[str, Any], int]], threshold: float, min_labelled: int) -> Quality:
    """Precision, recall (at `threshold`) and PR-AUC of labelled predictions (`labels.join_labels` output).

    Metrics are None below `min_labelled` pairs, precision without a flagged prediction, recall without a
    fraud label, PR-AUC with one class only: absent rather than a misleading 0.
    """
    y = np.fromiter((lab for _, lab in pairs), np.int64, len(pairs))
    positives = int(y.sum())
    if len(pairs) < min_labelled:
        return Quality(len(pairs), positives)
    from mlplatform.training.evaluation import binary_metrics  # scikit-learn: seconds to import, only when used

    scores = np.fromiter((_number(r.get("score")) for r, _ in pairs), np.float64, len(pairs))
    keep = np.isfinite(scores)
    y, scores = y[keep], scores[keep]
    m = binary_metrics(y, scores, threshold)
    flagged = int((scores >= threshold).sum())
    return Quality(
        labelled=len(pairs),
        positives=positives,
        precision=m["precision"] if flagged else None,
        recall=m["recall"] if int(y.sum()) else None,
        pr_auc=m["pr_auc"] if math.isfinite(m["pr_auc"]) else None,
    )


def drift_of(report: VersionReport, reference: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> None:
    """Fill a version report's feature and score drift from its window's records."""
    feats: Mapping[str, Any] = reference.get("features") or {}
    columns = live_columns(records, feats)
    report.features = [feature_drift(name, col, columns[name]) for name, col in feats.items()]
    score_ref = reference.get("score")
    if score_ref:
        scores = np.fromiter((_number(r.get("score")) for r in records), np.float64, len(records))
        report.score_psi = psi(score_ref, scores)
        report.score_ks = ks_statistic(score_ref, scores)
        report.score_reference_bins = list(score_ref.get("proportions") or [])
        report.score_live_bins = bin_proportions(score_ref, scores).tolist()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
