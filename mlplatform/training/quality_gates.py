"""Quality gates beyond the overall metrics: per-slice regressions against the champion, and segment disparity.

Both judge a difference against a tolerance that grows with the noise of the evidence: a slice with a dozen
frauds cannot show a regression a slice with a thousand can. The slice gate compares the candidate with the
champion on the same rows (a paired Poisson bootstrap gives the standard error of the difference); the inclusion
check compares the candidate's recall and false-positive rate between the customers' synthetic segments (two
independent proportions). Both read the slices of `mlplatform.training.evaluation.slice_masks`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from mlplatform.data.generator import SEGMENTS
from mlplatform.settings import PlatformSettings
from mlplatform.training.evaluation import binary_metrics, slice_masks

#: Bootstrap resamples behind a slice's standard error; the seed makes the gate's verdict reproducible.
BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_SEED = 0
#: The metrics the slice gate compares.
SLICE_METRICS = ("pr_auc", "recall")


@dataclass(frozen=True)
class GateSettings:
    """Tolerances of the slice and inclusion gates (PlatformSettings.gate_* carry them)."""

    slice_max_regression: float = 0.02
    confidence_z: float = 1.645
    slice_min_positives: int = 10
    max_segment_recall_gap: float = 0.15
    max_segment_fpr_gap: float = 0.01

    @classmethod
    def of(cls, settings: PlatformSettings) -> GateSettings:
        """The gate settings of a PlatformSettings."""
        return cls(
            slice_max_regression=settings.gate_slice_max_regression,
            confidence_z=settings.gate_confidence_z,
            slice_min_positives=settings.gate_slice_min_positives,
            max_segment_recall_gap=settings.gate_max_segment_recall_gap,
            max_segment_fpr_gap=settings.gate_max_segment_fpr_gap,
        )


def familywise_z(z: float, comparisons: int) -> float:
    """The z of each of `comparisons` one-sided tests so that together they err no more often than one test at
    `z` (Bonferroni): a gate that looks at 38 slice metrics would otherwise refuse a model no worse than the
    champion about twice per run by chance."""
    alpha = float(norm.sf(z))
    return float(norm.isf(alpha / max(comparisons, 1)))


def _weighted_metrics(
    y: np.ndarray, scores: np.ndarray, threshold: float, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Average precision and recall of one model under each row of `weights` (resamples x rows)."""
    order = np.argsort(-scores, kind="stable")
    ys, w = y[order].astype(np.float32), weights[:, order]
    tp = np.cumsum(w * ys, axis=1)
    precision = tp / np.maximum(np.cumsum(w, axis=1), 1e-12)
    positives = np.maximum((w * ys).sum(axis=1), 1e-12)
    flagged = (scores[order] >= threshold).astype(np.float32)
    return {
        "pr_auc": (precision * w * ys).sum(axis=1) / positives,
        "recall": (w * ys * flagged).sum(axis=1) / positives,
    }


@dataclass(frozen=True)
class SliceComparison:
    """One metric on one slice: the candidate against the champion on the same rows."""

    slice: str
    metric: str
    candidate: float
    champion: float
    standard_error: float
    tolerance: float
    count: int
    positives: int
    regressed: bool


def compare_slices(
    frame: pd.DataFrame,
    y: np.ndarray,
    candidate: tuple[np.ndarray, float],
    champion: tuple[np.ndarray, float],
    gate: GateSettings,
) -> dict[str, Any]:
    """Each important slice's PR-AUC and recall, candidate vs champion (each at its own operating threshold).

    A metric regresses when the champion's value exceeds the candidate's by more than
    `slice_max_regression + z * SE`, SE being the paired bootstrap standard error of the difference
    on that slice and z is `confidence_z` corrected for the number of comparisons (`familywise_z`). Slices with
    fewer than `slice_min_positives` frauds are listed as not gated.

    Returns:
        `compared` (SliceComparison rows as dicts), `not_gated` (slice names, too little evidence) and `z`.
    """
    y = np.asarray(y).astype(int)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    gated, not_gated = {}, []
    for name, mask in slice_masks(frame).items():
        positives = int(y[mask].sum())
        if positives < gate.slice_min_positives or positives == int(mask.sum()):
            not_gated.append(name)
        else:
            gated[name] = mask
    z = familywise_z(gate.confidence_z, len(gated) * len(SLICE_METRICS))
    # one Poisson bootstrap of the whole test set: each resample weighs a row the same in every slice
    resamples = rng.poisson(1.0, size=(BOOTSTRAP_RESAMPLES, len(y))).astype(np.float32)
    compared = []
    for name, mask in gated.items():
        positives, ys = int(y[mask].sum()), y[mask]
        weights = resamples[:, mask]
        cand_boot = _weighted_metrics(ys, candidate[0][mask], candidate[1], weights)
        champ_boot = _weighted_metrics(ys, champion[0][mask], champion[1], weights)
        cand_obs = binary_metrics(ys, candidate[0][mask], candidate[1])
        champ_obs = binary_metrics(ys, champion[0][mask], champion[1])
        for metric in SLICE_METRICS:
            se = float(np.std(cand_boot[metric] - champ_boot[metric], ddof=1))
            tolerance = gate.slice_max_regression + z * se
            row = SliceComparison(
                name,
                metric,
                float(cand_obs[metric]),
                float(champ_obs[metric]),
                se,
                tolerance,
                int(mask.sum()),
                positives,
                bool(champ_obs[metric] - cand_obs[metric] > tolerance),
            )
            compared.append(asdict(row))
    return {"compared": compared, "not_gated": not_gated, "z": z}


def _proportion_gap(
    per_segment: Mapping[str, Mapping[str, Any]], rate: str, n: str, z: float, bound: float
) -> dict[str, Any] | None:
    """The largest gap of `rate` between two segments, its standard error and whether its lower confidence
    bound exceeds `bound` (None with fewer than two segments to compare)."""
    rows = {k: v for k, v in per_segment.items() if v[n] > 0}
    if len(rows) < 2:
        return None
    hi = max(rows, key=lambda k: rows[k][rate])
    lo = min(rows, key=lambda k: rows[k][rate])
    gap = rows[hi][rate] - rows[lo][rate]

    def var(k: str) -> float:  # Agresti-Caffo: a proportion of 0 or 1 still has a variance
        p = (rows[k][rate] * rows[k][n] + 1) / (rows[k][n] + 2)
        return p * (1 - p) / (rows[k][n] + 2)

    se = math.sqrt(var(hi) + var(lo))
    return {
        "highest": hi,
        "lowest": lo,
        "gap": gap,
        "standard_error": se,
        "bound": bound,
        "exceeded": bool(gap - z * se > bound),
    }


def segment_disparity(
    frame: pd.DataFrame, y: np.ndarray, scores: np.ndarray, threshold: float, gate: GateSettings
) -> dict[str, Any]:
    """Recall and false-positive rate of the model per synthetic customer segment, and the largest gap of each.

    A gap is a disparity beyond the bound when even its lower confidence bound (`gap - confidence_z * SE`) is
    above `max_segment_recall_gap` (recall, among segments with at least `slice_min_positives` frauds) or
    `max_segment_fpr_gap` (false-positive rate).
    """
    y = np.asarray(y).astype(int)
    masks = slice_masks(frame)
    flagged = scores >= threshold
    per_segment: dict[str, dict[str, Any]] = {}
    for name in SEGMENTS:
        m = masks.get(f"segment={name}")
        if m is None or not m.any():
            continue
        pos, neg = int((y[m] == 1).sum()), int((y[m] == 0).sum())
        per_segment[name] = {
            "count": int(m.sum()),
            "positives": pos,
            "negatives": neg,
            "recall": float((flagged[m] & (y[m] == 1)).sum() / pos) if pos else float("nan"),
            "false_positive_rate": float((flagged[m] & (y[m] == 0)).sum() / neg) if neg else float("nan"),
        }
    enough = {k: v for k, v in per_segment.items() if v["positives"] >= gate.slice_min_positives}
    return {
        "segments": per_segment,
        "recall_gap": _proportion_gap(enough, "recall", "positives", gate.confidence_z, gate.max_segment_recall_gap),
        "false_positive_rate_gap": _proportion_gap(
            per_segment, "false_positive_rate", "negatives", gate.confidence_z, gate.max_segment_fpr_gap
        ),
    }


def quality_gate_reasons(report: Mapping[str, Any]) -> list[str]:
    """Why the slice and inclusion checks of an evaluation report refuse the model (empty when they pass)."""
    reasons = []
    for row in (report.get("slice_gate") or {}).get("compared", []):
        if row["regressed"]:
            reasons.append(
                f"{row['metric']} on slice {row['slice']} ({row['positives']} frauds in {row['count']} rows) is "
                f"{row['candidate']:.4f} against the champion's {row['champion']:.4f}: worse by more than the "
                f"tolerance {row['tolerance']:.4f} (allowed regression + {row['standard_error']:.4f} standard error "
                "x z)"
            )
    inclusion = report.get("inclusion") or {}
    for key, label in (("recall_gap", "recall"), ("false_positive_rate_gap", "false-positive rate")):
        gap = inclusion.get(key)
        if gap and gap["exceeded"]:
            reasons.append(
                f"{label} differs between customer segments {gap['highest']} and {gap['lowest']} by "
                f"{gap['gap']:.4f} (standard error {gap['standard_error']:.4f}), beyond the bound {gap['bound']}"
            )
    return reasons
