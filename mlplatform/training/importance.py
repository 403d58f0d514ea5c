"""What each feature is worth to the model: permutation importance on a labelled set.

A feature's importance is the PR-AUC the model loses when that feature's column is shuffled across the rows
(its link to the label and to the other features broken, its distribution kept), averaged over a few shuffles.
A feature earns its keep when that loss is measurable: above `MIN_PR_AUC_DROP` and above the shuffles' own
noise (`NOISE_Z` standard errors of the mean).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score
from torch import nn

from mlplatform.training.model import predict_proba

#: Shuffles per feature.
REPEATS = 5
#: The smallest PR-AUC loss that counts as a contribution (below it a feature adds nothing measurable).
MIN_PR_AUC_DROP = 0.002
#: Standard errors of the mean loss a contribution must exceed.
NOISE_Z = 2.0


def permutation_importance(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    feature_names: Sequence[str],
    repeats: int = REPEATS,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """PR-AUC lost per shuffled feature, most important first.

    Args:
        model: The trained model.
        x: Model input (rows x features, in `feature_names` order).
        y: Labels (0/1), with both classes present.
        feature_names: The model's feature names.
        repeats: Shuffles per feature.
        seed: Seed of the shuffles (the same seed gives the same figures).

    Returns:
        Per feature: `pr_auc_drop` (mean), `std` (over the shuffles), `measurable` (bool).
    """
    if x.ndim != 2 or x.shape[1] != len(feature_names):
        raise ValueError(f"x has shape {x.shape}, expected (rows, {len(feature_names)})")
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) != 2:
        raise ValueError("permutation importance needs both classes in y")
    if repeats < 2:
        raise ValueError(f"repeats must be at least 2, got {repeats}")
    base = float(average_precision_score(y, predict_proba(model, x)))
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(feature_names):
        drops = []
        for _ in range(repeats):
            shuffled = x.copy()
            shuffled[:, j] = x[rng.permutation(len(x)), j]
            drops.append(base - float(average_precision_score(y, predict_proba(model, shuffled))))
        mean, std = float(np.mean(drops)), float(np.std(drops, ddof=1))
        out[name] = {
            "pr_auc_drop": mean,
            "std": std,
            "measurable": bool(mean > max(MIN_PR_AUC_DROP, NOISE_Z * std / math.sqrt(repeats))),
        }
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["pr_auc_drop"]))


def features_adding_nothing(importance: dict[str, dict[str, Any]]) -> list[str]:
    """The features whose loss when shuffled is not measurable, each with its figure."""
    return [
        f"{name}: PR-AUC drop {v['pr_auc_drop']:.4f} (std {v['std']:.4f})"
        for name, v in importance.items()
        if not v["measurable"]
    ]
