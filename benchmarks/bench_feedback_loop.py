"""Time from drift onset to each link of the feedback loop, on real local processes; writes JSON.

Runs the harness of tests/e2e/test_feedback_loop.py (tests/e2e/loop_harness.py) once in a fresh work dir:
undrifted control traffic, then drifted traffic -> drift gauge in Prometheus -> alert firing -> Alertmanager
-> webhook starts the local retraining pipeline -> challenger registered -> canary rollout -> promoted or
rolled back. Wall-clock seconds from the onset to each link, and the stages between them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from machine import describe, report  # benchmarks/machine.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
from loop_harness import LoopConfig, run_feedback_loop  # noqa: E402 - the test's harness, not a package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, help="Write the JSON here as well as to stdout.")
    parser.add_argument("--keep", type=Path, help="Work dir to keep (default: a temporary one, removed).")
    args = parser.parse_args()
    config = LoopConfig()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run_feedback_loop(args.keep, config, log=lambda line: print(line, file=sys.stderr))
    else:
        with tempfile.TemporaryDirectory(prefix="feedback-loop-") as tmp:
            result = run_feedback_loop(Path(tmp), config, log=lambda line: print(line, file=sys.stderr))
    t = result.timings_seconds
    outcome = result.rollout["outcome"]
    end = "new_champion" if outcome == "promoted" else "rolled_back"
    out = {
        "benchmark": "feedback_loop",
        "machine": describe(),
        "config": result.config,
        "seconds_from_drift_onset": t,
        "stages_seconds": {
            "detection (onset -> alert firing)": t["alert_firing"],
            "alert -> run started (Alertmanager, webhook)": round(t["run_started"] - t["alert_firing"], 2),
            "pipeline (run started -> challenger registered)": round(t["challenger_registered"] - t["run_started"], 2),
            "registered -> rollout started": round(t["rollout_started"] - t["challenger_registered"], 2),
            "canary rollout": round(t[end] - t["rollout_started"], 2),
        },
        "outcome": outcome,
        "rollout_reason": result.rollout["reason"],
        "rollout_steps": [(s["percent"], s["decision"], s["duration_seconds"]) for s in result.rollout["steps"]],
        "alert": result.alert["labels"]["alertname"],
        "control_max_psi": max(result.control_max_psi.values()),
        "drift_max_psi": max(result.drift_max_psi.values()),
        "bootstrap_seconds": result.bootstrap_seconds,
        "total_seconds": result.total_seconds,
    }
    report(out, args.output)


if __name__ == "__main__":
    main()
