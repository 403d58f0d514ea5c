"""Tuning (`mlplatform tune`): the train step's defaults vs the best configuration a seeded Optuna search finds on the
validation window, both scored on the TEST window; prints JSON.

The data comes from the real steps (generator -> Feast features -> point-in-time training set, split by time as the
pipeline splits it). The search runs exactly as `mlplatform tune` does (TPE with the seed, the defaults as the first
trial, median pruning, every trial an MLflow child run on SQLite in a temporary folder); its wall time includes the
MLflow bookkeeping. Then the defaults and the best configuration are each trained once more with the same seed and
scored on the test window, which the search never saw. Whatever the gain is, it is reported as measured.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from machine import describe, report  # benchmarks/machine.py, beside this script

from components.features.step import run_features
from components.ingest.step import run_ingest
from components.training_set.step import run_training_set
from mlplatform import registry
from mlplatform.features.compute import MODEL_FEATURES, model_input
from mlplatform.settings import PlatformSettings
from mlplatform.training.evaluation import binary_metrics
from mlplatform.training.loop import TrainConfig, resolve_device, train_model
from mlplatform.training.model import ModelConfig, predict_proba
from mlplatform.training.search_space import apply_params, default_params
from mlplatform.training.tuning import TuneOptions, trial_summary, tune


def scores(params: dict, frames: dict[str, pd.DataFrame], seed: int, device: str) -> dict[str, float]:
    """Train one configuration on the training window; PR-AUC (and ROC-AUC) on validation and test."""
    config, layers = apply_params(params, TrainConfig(seed=seed, device=device))
    x = {k: model_input(f) for k, f in frames.items()}
    y = {k: f["is_fraud"].to_numpy(np.float32) for k, f in frames.items()}
    started = time.perf_counter()
    result = train_model(
        ModelConfig(feature_names=list(MODEL_FEATURES), hidden_units=layers),
        x["train"],
        y["train"],
        x["validation"],
        y["validation"],
        config,
    )
    out = {"train_seconds": round(time.perf_counter() - started, 2), "epochs": len(result.history)}
    for split in ("validation", "test"):
        m = binary_metrics(y[split], predict_proba(result.model, x[split]), 0.5)
        out[f"{split}_pr_auc"], out[f"{split}_roc_auc"] = round(m["pr_auc"], 4), round(m["roc_auc"], 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=60_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    machine = describe(resolve_device(args.device))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = PlatformSettings(work_dir=work)
        raw = work / "raw.parquet"
        splits = {s: work / f"{s}.parquet" for s in ("train", "validation", "test")}
        started = time.perf_counter()
        run_ingest(raw, n_transactions=args.transactions, n_days=args.days, seed=args.seed)
        run_features(raw, settings)
        # the pipeline's defaults: 10 validation days, 10 test days, 30 warm-up days
        run_training_set(raw, settings, 10, 10, *splits.values(), warmup_days=30)
        data_seconds = time.perf_counter() - started
        frames = {k: pd.read_parquet(p) for k, p in splits.items()}

        experiment_id = registry.configure(settings)
        options = TuneOptions(trials=args.trials, seed=args.seed, device=args.device)
        result = tune(frames["train"], frames["validation"], experiment_id, options)

        defaults = scores(default_params(), frames, args.seed, args.device)
        tuned = scores(result.best_params, frames, args.seed, args.device)

    gain = tuned["test_pr_auc"] - defaults["test_pr_auc"]
    report(
        {
            "benchmark": "tuning",
            "machine": machine,
            "data": {
                "transactions": args.transactions,
                "days": args.days,
                "rows": {k: len(f) for k, f in frames.items()},
                "fraud": {k: int(f["is_fraud"].sum()) for k, f in frames.items()},
                "seconds_to_build": round(data_seconds, 1),
            },
            "search": {
                "trials": len(result.trials),
                "completed": result.completed,
                "pruned": result.pruned,
                "seed": args.seed,
                "wall_seconds": round(result.wall_seconds, 1),
                "seconds_per_trial": round(result.wall_seconds / len(result.trials), 1),
                "best_trial": result.best_trial,
                "best_validation_pr_auc": round(result.best_value, 4),
                "defaults_validation_pr_auc": None if result.default_value is None else round(result.default_value, 4),
                "trials_table": trial_summary(result),
            },
            "defaults": {"params": default_params(), **defaults},
            "tuned": {"params": result.best_params, **tuned},
            "test_pr_auc_gain": round(gain, 4),
            "test_pr_auc_gain_relative": round(gain / defaults["test_pr_auc"], 4) if defaults["test_pr_auc"] else None,
            "note": "test window never seen by the search; both configurations trained with the same seed",
        },
        args.output,
    )


if __name__ == "__main__":
    main()
