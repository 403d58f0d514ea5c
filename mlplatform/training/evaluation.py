"""Model evaluation: ranking and threshold metrics, calibration, slices, and the rule baseline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from mlplatform.data.generator import CATEGORIES, SEGMENTS, customer_segments


def choose_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold that maximises F1 (the operating point of the model)."""
    precision, recall, thresholds = precision_recall_curve(y, scores)
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    if thresholds.size == 0:
        return 0.5
    return float(thresholds[int(np.argmax(f1[:-1]))])


def expected_calibration_error(y: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> float:
    """Mean |observed rate - mean score| over equal-width score bins, weighted by bin size."""
    bins = np.clip((scores * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(y[m].mean() - scores[m].mean())
    return float(ece)


def binary_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC-AUC, PR-AUC, precision/recall/F1 at the threshold, Brier score and calibration error."""
    y = np.asarray(y).astype(int)
    pred = scores >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    both = len(np.unique(y)) == 2
    return {
        "roc_auc": float(roc_auc_score(y, scores)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, scores)) if both else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "brier": float(brier_score_loss(y, np.clip(scores, 0, 1))),
        "ece": expected_calibration_error(y, np.clip(scores, 0, 1)),
        "positives": int(y.sum()),
        "count": int(len(y)),
    }


@dataclass(frozen=True)
class RuleBaseline:
    """The best single-feature rule: flag when `direction * feature >= direction * threshold`."""

    feature: str
    direction: int
    threshold: float

    def scores(self, frame: pd.DataFrame) -> np.ndarray:
        """The rule's ranking score (the signed feature): sweeping its threshold gives the PR curve."""
        return self.direction * pd.to_numeric(frame[self.feature]).fillna(0.0).to_numpy(np.float64)


def fit_rule_baseline(frame: pd.DataFrame, y: np.ndarray, features: Sequence[str]) -> RuleBaseline:
    """Choose the single feature (and direction) with the best PR-AUC, and its best-F1 threshold."""
    best: tuple[float, str, int] | None = None
    for f in features:
        x = pd.to_numeric(frame[f]).fillna(0.0).to_numpy(np.float64)
        for direction in (1, -1):
            ap = average_precision_score(y, direction * x)
            if best is None or ap > best[0]:
                best = (ap, f, direction)
    assert best is not None
    _, feature, direction = best
    signed = direction * pd.to_numeric(frame[feature]).fillna(0.0).to_numpy(np.float64)
    return RuleBaseline(feature, direction, direction * choose_threshold(y, signed))


#: Amount bands of the amount slices, [lo, hi).
AMOUNT_BANDS: tuple[tuple[float, float], ...] = ((0, 50), (50, 500), (500, np.inf))
#: Least rows a slice needs to be reported.
MIN_SLICE_ROWS = 20


def slice_masks(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The important slices of a labelled set, by name: merchant category, night vs day, amount band, new vs
    returning customer (no purchase in the 30 days before) and the customer's synthetic segment (never a model
    input). The one definition the report, the slice gate and the inclusion check share."""
    slices: dict[str, np.ndarray] = {}
    if "merchant_category" in frame:
        cat = frame["merchant_category"].fillna(-1).astype(int).to_numpy()
        for i, name in enumerate(CATEGORIES):
            slices[f"category={name}"] = cat == i
    if "is_night" in frame:
        night = frame["is_night"].to_numpy() > 0.5
        slices["time=night"], slices["time=day"] = night, ~night
    if "amount" in frame:
        amount = frame["amount"].to_numpy()
        for lo, hi in AMOUNT_BANDS:
            slices[f"amount={lo}-{hi}"] = (amount >= lo) & (amount < hi)
    if "cust_amount_avg_30d" in frame:
        # amounts are at least 0.5, so a 30-day mean of 0 (or none) means no purchase in those 30 days
        new = ~(pd.to_numeric(frame["cust_amount_avg_30d"]).fillna(0.0).to_numpy() > 0)
        slices["customer=new"], slices["customer=returning"] = new, ~new
    if "customer_id" in frame:
        segment = customer_segments(frame["customer_id"].to_numpy())
        for name in SEGMENTS:
            slices[f"segment={name}"] = segment == name
    return slices


def slice_metrics(
    frame: pd.DataFrame, y: np.ndarray, scores: np.ndarray, threshold: float
) -> dict[str, dict[str, float]]:
    """Metrics per slice of `slice_masks` (slices with at least MIN_SLICE_ROWS rows and both classes)."""
    out = {}
    for name, m in slice_masks(frame).items():
        if m.sum() >= MIN_SLICE_ROWS and 0 < y[m].sum() < m.sum():
            out[name] = binary_metrics(y[m], scores[m], threshold)
    return out


def roc_points(y: np.ndarray, scores: np.ndarray, max_points: int = 101) -> dict[str, list[float]]:
    """The ROC curve, downsampled to at most `max_points` points (for the Kubeflow UI)."""
    fpr, tpr, thr = roc_curve(y, scores)
    idx = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).astype(int))
    thr = np.where(np.isfinite(thr), thr, 1.0)
    return {"fpr": fpr[idx].tolist(), "tpr": tpr[idx].tolist(), "thresholds": thr[idx].tolist()}


def confusion(y: np.ndarray, scores: np.ndarray, threshold: float) -> list[list[int]]:
    """2x2 confusion matrix [[tn, fp], [fn, tp]] at the threshold."""
    return confusion_matrix(y, scores >= threshold, labels=[0, 1]).tolist()


def evaluation_report(
    frame: pd.DataFrame,
    y: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    baseline: RuleBaseline,
) -> dict[str, Any]:
    """Everything the evaluate step reports about a model on one labelled set."""
    base_scores = baseline.scores(frame)
    base = binary_metrics(y, base_scores, baseline.direction * baseline.threshold)
    return {
        "model": binary_metrics(y, scores, threshold),
        "baseline": {
            **base,
            "rule": f"{baseline.feature} {'>=' if baseline.direction > 0 else '<='} {baseline.threshold:.4g}",
        },
        "slices": slice_metrics(frame, y, scores, threshold),
        "roc": roc_points(y, scores),
        "confusion_matrix": confusion(y, scores, threshold),
        "threshold": threshold,
    }
