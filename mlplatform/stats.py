"""Reference statistics of features and scores, and the distances (PSI, KS) that drift checks use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Quantile bins per feature in the reference statistics.
N_BINS = 10
_EPS = 1e-4


def column_stats(values: np.ndarray, n_bins: int = N_BINS) -> dict[str, Any]:
    """Summary of one numeric column: missing rate, moments, range and quantile bins.

    Bin edges are the reference quantiles (deduplicated for discrete columns); the outer edges are
    open (-inf, +inf) so that live values outside the reference range still fall into a bin.
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
    expected = np.asarray(reference["proportions"], dtype=np.float64)
    actual = np.histogram(v, bins=np.asarray(edges))[0] / v.size
    expected = np.clip(expected, _EPS, None)
    actual = np.clip(actual, _EPS, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks_statistic(reference: Mapping[str, Any], values: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between the reference's binned CDF and `values`' CDF at the edges."""
    edges = np.asarray(reference.get("edges") or [], dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if edges.size < 2 or v.size == 0:
        return float("nan")
    ref_cdf = np.cumsum(reference["proportions"])[:-1]
    live_cdf = np.searchsorted(np.sort(v), edges[1:-1], side="right") / v.size
    return float(np.max(np.abs(ref_cdf - live_cdf))) if ref_cdf.size else 0.0
