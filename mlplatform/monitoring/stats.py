"""Reference statistics of features and scores, and the distances (PSI, KS) that drift checks use."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Quantile bins per feature in the reference statistics.
N_BINS = 10
_EPS = 1e-4


def column_stats(values: np.ndarray, n_bins: int = N_BINS) -> dict[str, Any]:
    """Summary of one numeric column: missing rate, moments, range and quantile bins.

    Bin edges are the reference quantiles; a discrete column (at most `n_bins` distinct values: flags,
    categories, small counts) gets one bin per value instead, since quantiles would lump a rare value with
    the common one (an `is_night` share of 5 % has every decile at 0, and its drift would be invisible).
    The outer edges are open (-inf, +inf) so that live values outside the reference range still fall into
    a bin.
    """
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    out: dict[str, Any] = {
        "count": int(v.size),
        "missing_rate": float(1.0 - finite.size / v.size) if v.size else 0.0,
    }
    if finite.size == 0:
        return {
            **out,
            "mean": None,
            "std": None,
            "min": None,
            "max": None,
            "edges": [],
            "proportions": [],
        }
    distinct = np.unique(finite)
    if distinct.size <= n_bins:  # bins [v_i, v_i+1): each value alone; the smallest value's bin starts at -inf
        inner = distinct[1:]
    else:
        inner = np.unique(np.quantile(finite, np.linspace(0, 1, n_bins + 1)[1:-1]))
    edges = [-np.inf, *inner.tolist(), np.inf]
    counts, _ = np.histogram(finite, bins=edges)
    return {
        **out,
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "edges": [float(e) for e in edges],
        "proportions": (counts / finite.size).tolist(),
    }


def reference_stats(
    features: np.ndarray, feature_names: Sequence[str], scores: np.ndarray | None = None
) -> dict[str, Any]:
    """Reference statistics of a feature matrix (columns in `feature_names`) and of model scores."""
    out: dict[str, Any] = {"features": {name: column_stats(features[:, i]) for i, name in enumerate(feature_names)}}
    if scores is not None:
        out["score"] = column_stats(scores)
    return out


def psi(reference: Mapping[str, Any], values: np.ndarray) -> float:
    """Population stability index of `values` against a column's reference bins.

    Returns NaN when either side has no finite value.
    """
    edges = reference.get("edges") or []
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(edges) < 2 or v.size == 0:
        return float("nan")
    actual = np.histogram(v, bins=np.asarray(edges))[0] / v.size
    return psi_of_proportions(reference["proportions"], actual)


def ks_statistic(reference: Mapping[str, Any], values: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between the reference's binned CDF and `values`' CDF at the edges."""
    edges = np.asarray(reference.get("edges") or [], dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if edges.size < 2 or v.size == 0:
        return float("nan")
    # side="left": the share of values below each edge, as the reference bins [edge, next edge) count them
    live_cdf = np.searchsorted(np.sort(v), edges[1:-1], side="left") / v.size
    return ks_of_cdfs(np.cumsum(reference["proportions"])[:-1], live_cdf)


def psi_of_proportions(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Population stability index of two binned distributions (proportions over the same bins).

    Empty bins are clipped to a small epsilon so that a bin empty on one side gives a large, finite term.
    """
    e = np.clip(np.asarray(expected, dtype=np.float64), _EPS, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_of_cdfs(expected_cdf: Sequence[float] | np.ndarray, actual_cdf: Sequence[float] | np.ndarray) -> float:
    """Kolmogorov-Smirnov distance of two CDFs evaluated at the same inner bin edges (0 without inner edges)."""
    e = np.asarray(expected_cdf, dtype=np.float64)
    a = np.asarray(actual_cdf, dtype=np.float64)
    return float(np.max(np.abs(e - a))) if e.size else 0.0


def psi_of_counts(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """PSI of two histograms given as counts per bin (same bins); NaN when either side is empty."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.sum() <= 0 or a.sum() <= 0:
        return float("nan")
    return psi_of_proportions(e / e.sum(), a / a.sum())


def ks_of_counts(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """KS distance of two histograms given as counts per bin (same bins); NaN when either side is empty."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.sum() <= 0 or a.sum() <= 0:
        return float("nan")
    return ks_of_cdfs(np.cumsum(e)[:-1] / e.sum(), np.cumsum(a)[:-1] / a.sum())


def bin_proportions(reference: Mapping[str, Any], values: np.ndarray) -> np.ndarray:
    """Share of `values`' finite entries in each of a column's reference bins (empty when either side is empty)."""
    edges = reference.get("edges") or []
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(edges) < 2 or v.size == 0:
        return np.empty(0)
    return np.histogram(v, bins=np.asarray(edges))[0] / v.size


def standardized_mean_difference(reference: Mapping[str, Any], values: np.ndarray) -> float:
    """(live mean - reference mean) / pooled standard deviation, over finite values (Cohen's d).

    The pooled standard deviation is sqrt((reference std^2 + live std^2) / 2). Signed: positive when
    live values are higher. 0 when both sides are constant and equal, +-inf when both are constant and
    differ (within float noise), NaN when either side has no finite value.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    mean, std = reference.get("mean"), reference.get("std")
    if v.size == 0 or mean is None or std is None:
        return float("nan")
    diff = float(v.mean()) - float(mean)
    pooled = float(np.sqrt((float(std) ** 2 + float(v.std()) ** 2) / 2.0))
    tol = 1e-12 * max(1.0, abs(float(mean)))  # float noise of a constant column's std
    if pooled > tol:
        return diff / pooled
    return 0.0 if abs(diff) <= tol else float(np.copysign(np.inf, diff))


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' `histogram_quantile` on cumulative (le, count) pairs: linear within the bucket.

    Returns None without observations; the highest finite bound when the quantile falls in the +Inf bucket.
    """
    buckets = sorted(buckets)
    if not buckets or buckets[-1][0] != math.inf or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == math.inf:
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return None
