"""Model staleness: one model trained on a window, scored on each following week of gradually drifting traffic.

PR-AUC per week of model age, the least-squares PR-AUC lost per week, and what it implies: the age at which
the loss reaches the tolerated loss, the staleness alert's threshold and the retraining cadence
(mlplatform/training/staleness.py). A control run without drift shows what age alone costs. Writes JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from machine import describe, report  # benchmarks/machine.py, beside this script

from mlplatform.errors import ConfigError
from mlplatform.training.staleness import StalenessConfig, WeekPoint, measure_staleness

DEFAULTS = StalenessConfig()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, help="Write the JSON here as well as to stdout.")
    parser.add_argument("--transactions-per-day", type=int, default=DEFAULTS.transactions_per_day)
    parser.add_argument("--weeks", type=int, default=DEFAULTS.weeks, help="Evaluation weeks after training.")
    parser.add_argument(
        "--drift-per-week", type=float, default=DEFAULTS.drift_per_week, help="Drift (0..1 scale) added per week."
    )
    parser.add_argument("--replicates", type=int, default=DEFAULTS.replicates, help="Independent repetitions.")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--tolerated-pr-auc-loss", type=float, default=DEFAULTS.tolerated_pr_auc_loss)
    parser.add_argument("--retraining-margin-days", type=float, default=DEFAULTS.retraining_margin_days)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="Intra-op threads for training (1: on a busy 2-core machine more threads only contend).",
    )
    parser.add_argument("--no-control", action="store_true", help="Skip the control run without drift.")
    args = parser.parse_args(argv)
    if args.torch_threads < 1:
        parser.error(f"--torch-threads must be at least 1, got {args.torch_threads}")
    try:
        args.config = StalenessConfig(
            transactions_per_day=args.transactions_per_day,
            weeks=args.weeks,
            drift_per_week=args.drift_per_week,
            replicates=args.replicates,
            seed=args.seed,
            tolerated_pr_auc_loss=args.tolerated_pr_auc_loss,
            retraining_margin_days=args.retraining_margin_days,
        )
    except ConfigError as exc:
        parser.error(str(exc))
    return args


def progress(label: str, started: float):
    def log(replicate: int, points: list[WeekPoint]) -> None:
        curve = " ".join(f"{p.pr_auc:.3f}" for p in points)
        print(f"[{time.monotonic() - started:6.0f} s] {label} replicate {replicate}: PR-AUC {curve}", file=sys.stderr)

    return log


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    machine = describe()
    started = time.monotonic()
    result = measure_staleness(args.config, on_replicate=progress("drift", started))
    out = {"benchmark": "staleness", "machine": machine, **result.summary()}
    if not args.no_control:
        control = measure_staleness(replace(args.config, drift_per_week=0.0), on_replicate=progress("control", started))
        summary = control.summary()
        out["control"] = {"drift_per_week": 0.0, "weeks": summary["weeks"], "fit": summary["fit"]}
        out["control"]["cadence"] = summary["cadence"]
    out["seconds"] = round(time.monotonic() - started, 1)
    report(out, args.output)


if __name__ == "__main__":
    main()
