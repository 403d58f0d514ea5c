"""Wall time per training-pipeline step, and in total, at several data sizes; prints JSON.

Each size runs the step functions the KFP components wrap, in one process and in pipeline order,
on a fresh work dir with the embedded defaults (Feast local stores, MLflow on SQLite). Set-up
(imports, environment) is excluded; KFP's per-task process start-up is not part of the figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from machine import describe, report  # benchmarks/machine.py, beside this script

from components.evaluate.step import run_evaluate
from components.features.step import run_features
from components.ingest.step import run_ingest
from components.register.step import run_register
from components.train.step import run_train
from components.training_set.step import run_training_set
from components.validate.step import champion_reference, run_validate
from mlplatform.settings import PlatformSettings
from mlplatform.training.loop import TrainConfig


def bench(n: int, seed: int) -> dict:
    steps: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = PlatformSettings(work_dir=work)
        raw = work / "raw.parquet"
        splits = {s: work / f"{s}.parquet" for s in ("train", "validation", "test")}

        def timed(name, fn, *args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            steps[name] = round(time.perf_counter() - t, 3)
            return out

        total = time.perf_counter()
        ingest = timed("ingest", run_ingest, raw, n_transactions=n, n_days=60, seed=seed)
        feats = timed("features", run_features, raw, settings)
        timed("training_set", run_training_set, raw, settings, 10, 10, *splits.values())
        timed("validate", lambda: run_validate(splits, champion_reference(settings)))
        outcome = timed(
            "train", run_train, splits["train"], splits["validation"], work / "model", TrainConfig(seed=seed), settings
        )
        report = timed(
            "evaluate",
            run_evaluate,
            work / "model",
            splits["validation"],
            splits["test"],
            settings,
            outcome.mlflow_run_id,
            work / "eval",
        )
        result = timed(
            "register", run_register, outcome.mlflow_run_id, report, ingest, feats.versions, "bench", settings
        )
        total_s = round(time.perf_counter() - total, 3)
    return {
        "transactions": n,
        "steps_seconds": steps,
        "total_seconds": total_s,
        "epochs": outcome.epochs_run,
        "test_pr_auc": round(result.test_pr_auc, 4),
        "baseline_pr_auc": round(result.baseline_pr_auc, 4),
        "registered": result.registered,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    runs = [bench(n, args.seed) for n in args.sizes]
    result = {"benchmark": "pipeline", "machine": describe(), "runs": runs}
    if len(runs) > 1:
        result["ratio_largest_to_smallest_total"] = round(runs[-1]["total_seconds"] / runs[0]["total_seconds"], 2)
    report(result, args.output)


if __name__ == "__main__":
    main()
