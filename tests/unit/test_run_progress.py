"""`mlplatform run`'s quiet screen: step lines from kfp.local's log, key figures, the failure tail, the redirect."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from mlplatform.orchestration.progress import (
    PipelineProgress,
    StepEvent,
    StepTracker,
    format_duration,
    key_figure,
    new_log_path,
    parse_event,
    step_line,
    step_log_tail,
    strip_ansi,
)

CYAN, GREEN, RED, RESET = "\033[96m", "\033[92m", "\033[91m", "\033[0m"


def record(clock: str, message: str, level: str = "INFO") -> str:
    """A line as kfp.local's logger writes it (kfp.local.logging_utils), colours included."""
    return f"{clock} - {level} - {message}"


def started(task: str, clock: str = "10:00:00.000") -> str:
    return record(clock, f"Executing task {CYAN}'{task}'{RESET}")


def finished(task: str, clock: str, ok: bool = True) -> str:
    status = f"{GREEN}SUCCESS{RESET}" if ok else f"{RED}FAILURE{RESET}"
    return record(clock, f"Task {CYAN}'{task}'{RESET} finished with status {status}", "INFO" if ok else "ERROR")


def executor_output(params: dict[str, Any] | None = None, artifacts: dict[str, dict[str, Any]] | None = None) -> dict:
    """An executor_output.json as the KFP executor writes it: returned values, output artifacts' metadata."""
    out: dict[str, Any] = {}
    if params:
        out["parameterValues"] = params
    if artifacts:
        out["artifacts"] = {
            name: {"artifacts": [{"name": name, "uri": f"/kfp/run/{name}", "metadata": meta}]}
            for name, meta in artifacts.items()
        }
    return out


SUMMARY = {"registered": True, "version": "2", "aliases": ["challenger"], "reasons": [], "rows": 39173}
OUTPUTS = {
    "ingest": executor_output({"Output": json.dumps({"rows": 39173, "fraud_rows": 780, "data_hash": "a6"})}),
    "features": executor_output(
        {"Output": "{}"},
        {"feature_state": {"applied": ["a", "b", "c", "d"], "materialized_until": "2026-02-15T00:00:00+00:00"}},
    ),
    "training-set": executor_output(
        artifacts={"train": {"train_rows": 4306, "validation_rows": 4290, "test_rows": 4369}}
    ),
    "validate-data": executor_output(artifacts={"report": {"checks": 293.0, "warnings": ["drift"]}}),
    "train": executor_output(
        {"Output": "16e9"}, {"model": {"best_epoch": 3, "epochs_run": 5, "best_val_loss": 0.38176, "device": "cpu"}}
    ),
    "evaluate": executor_output(
        {
            "Output": json.dumps(
                {"model": {"pr_auc": 0.61234}, "baseline": {"pr_auc": 0.2233}, "champion": {"pr_auc": 0.5871}}
            )
        }
    ),
    "register": executor_output({"registered": True, "version": "2", "summary": json.dumps(SUMMARY)}),
    "deploy-canary": executor_output(
        {
            "Output": json.dumps(
                {**SUMMARY, "deployment": {"action": "rollout", "version": "2", "outcome": "rolled_back"}}
            )
        }
    ),
}


def test_kfp_local_records_become_step_events() -> None:
    assert parse_event(started("ingest", "10:00:01.250")) == StepEvent("start", "ingest", 36001.25)
    assert parse_event(finished("train", "10:02:00.000")) == StepEvent("success", "train", 36120.0)
    failed = parse_event(finished("features", "10:02:00.000", ok=False))
    assert failed is not None and failed.kind == "failure"
    retry = parse_event(record("10:02:00.500", "Task features failed (attempt 1/3). Retrying in 30.0s..."))
    assert retry == StepEvent("retry", "features", 36120.5, "attempt 1/3 failed, retrying in 30 s")
    cached = parse_event(record("10:02:00.500", "Task ingest cache hit (key=abcdef123456); skipping execution."))
    assert cached is not None and cached.kind == "cached"
    for other in (
        record("10:00:00.000", f"Task {CYAN}'ingest'{RESET} outputs:"),
        record("10:00:00.000", "Streamed logs:"),
        "    Executing task 'ingest'",  # an executor's own output is indented: never an event
        "    [KFP Executor 2026-12-01 05:34:18,914 INFO]: Got executor_input:",
        "",
    ):
        assert parse_event(other) is None


@pytest.mark.parametrize(
    ("task", "figure"),
    [
        ("ingest", "rows 39,173 (780 fraud, 1.99%)"),
        ("features", "4 feature objects, online store to 2026-02-15"),
        ("training-set", "rows train 4,306 / validation 4,290 / test 4,369"),
        ("validate-data", "293 checks passed, 1 warning"),
        ("train", "best epoch 3/5, val loss 0.3818 on cpu"),
        ("evaluate", "test PR-AUC 0.6123, baseline 0.2233, champion 0.5871"),
        ("register", "registered version 2 (challenger)"),
        ("deploy-canary", "rollout of version 2: rolled back"),
    ],
)
def test_each_step_is_known_by_its_key_figure(task: str, figure: str) -> None:
    assert key_figure(task, OUTPUTS[task]) == figure


def test_key_figures_of_other_outcomes_and_of_unexpected_outputs() -> None:
    rejected = {**SUMMARY, "registered": False, "reasons": ["PR-AUC below the champion's"]}
    output = executor_output({"registered": False, "version": "", "summary": json.dumps(rejected)})
    assert key_figure("register", output) == "rejected: PR-AUC below the champion's"
    first = {"deployment": {"action": "deployed", "version": "1", "outcome": "deployed"}}
    assert key_figure("deploy-canary", executor_output({"Output": json.dumps(first)})) == (
        "version 1 deployed as champion"
    )
    nothing = {"deployment": {"action": "nothing", "version": "", "outcome": ""}}
    assert key_figure("deploy-canary", executor_output({"Output": json.dumps(nothing)})) == "nothing to deploy"
    assert key_figure("evaluate", executor_output({"Output": "not json"})) == ""
    assert key_figure("ingest", None) == ""
    assert key_figure("some-other-task", {"parameterValues": {"Output": "x"}}) == ""


def test_a_finished_step_is_one_line_with_mark_name_duration_and_figure() -> None:
    assert format_duration(12.34) == "12.3 s"
    assert format_duration(185) == "3 min 05 s"
    assert step_line("ingest", "success", 12.34, "rows 100,000").plain == "✓ ingest            12.3 s  rows 100,000"
    assert step_line("train", "failure", 61).plain == "✗ train         1 min 01 s  failed"
    assert step_line("ingest", "cached", None).plain.split() == ["✓", "ingest", "cached"]


def test_the_tracker_times_each_step_and_reports_failures_and_retries() -> None:
    tracker = StepTracker(OUTPUTS.get)
    lines: list[str] = []
    for line in (
        started("ingest", "23:59:58.000"),
        finished("ingest", "00:00:10.500"),  # past midnight
        started("features", "00:00:11.000"),
        finished("features", "00:00:12.000", ok=False),
        record("00:00:12.001", "Task features failed (attempt 1/3). Retrying in 30.0s..."),
        started("features", "00:00:42.000"),
    ):
        event = parse_event(line)
        assert event is not None
        lines += [text.plain for text in tracker.feed(event)]
    assert lines == [
        "✓ ingest            12.5 s  rows 39,173 (780 fraud, 1.99%)",
        "✗ features           1.0 s  failed",
        "  ↻ features: attempt 1/3 failed, retrying in 30 s",
    ]
    assert tracker.running == "features" and tracker.finished == 1 and tracker.failed == "features"


def test_the_failure_tail_is_the_failing_steps_own_log_without_noise() -> None:
    log = "\n".join(
        [
            started("ingest"),
            "    ingest output",
            finished("ingest", "10:00:01.000"),
            "-" * 80,
            started("features", "10:00:02.000"),
            "/venv/site-packages/kfp/local/subprocess_task_handler.py:81: RuntimeWarning: You may be attemping to",
            "  warnings.warn(",
            record("10:00:02.000", "Streamed logs:"),
            "",
            "    [KFP Executor 2026-12-01 05:34:18,914 INFO]: Got executor_input:",
            "    {",
            '        "inputs": {}',
            "    }",
            *[f"    line {i}" for i in range(50)],
            "    ValueError: the feature view is missing",
            "",
            finished("features", "10:00:09.000", ok=False),
            "-" * 80,
        ]
    )
    tail = step_log_tail(log, lines=5)
    assert tail == [
        "    line 47",
        "    line 48",
        "    line 49",
        "    ValueError: the feature view is missing",
        "10:00:09.000 - ERROR - Task 'features' finished with status FAILURE",
    ]
    whole = step_log_tail(log, lines=100)
    assert whole[0] == "10:00:02.000 - INFO - Executing task 'features'"  # the failing step's part only
    assert whole[1] == "10:00:02.000 - INFO - Streamed logs:"  # kfp.local's warnings left out
    assert not any("executor_input" in line or line.strip() in ("{", "}") for line in whole)


def test_log_file_names_do_not_collide(tmp_path: Path) -> None:
    now = datetime(2026, 12, 1, 5, 28, 46)
    first = new_log_path(tmp_path, now)
    assert first.name == "pipeline-20261201-052846.log"
    first.write_text("")
    assert new_log_path(tmp_path, now).name == "pipeline-20261201-052846-2.log"


def _kfp_like_run(pipeline_root: Path, fail: bool) -> None:
    """What kfp.local does for two tasks: records through `logging` to sys.stdout, each subprocess's output
    printed line by line, and an executor_output.json per task under a new run folder."""
    run = pipeline_root / "fraud-training-2026-12-01-05-28-46-866374"
    logger = logging.getLogger("kfp-like")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    try:
        for task, clock, end, ok in (
            ("ingest", "10:00:00.000", "10:00:03.000", True),
            ("train", "10:00:04.000", "", not fail),
        ):
            logger.warning(started(task, clock))
            child = subprocess.run(
                [sys.executable, "-c", f"import os; print('{task} stdout'); os.write(2, b'{task} stderr\\n')"],
                capture_output=True,
                text=True,
                check=True,
            )
            print(f"    {child.stdout}    {child.stderr}", end="")
            if task == "train" and fail:
                print("    RuntimeError: loss is NaN")
                logger.warning(finished(task, "10:00:05.000", ok=False))
                raise RuntimeError(
                    f"Pipeline 'fraud-training' finished with status FAILURE. Inner task failed: '{task}'."
                )
            (run / task).mkdir(parents=True)
            (run / task / "executor_output.json").write_text(json.dumps(OUTPUTS[task]))
            logger.warning(finished(task, end or "10:00:06.000", ok))
        # Direct writes to the file descriptors (a C library, a child that inherits them) go to the log too.
        subprocess.run(
            [sys.executable, "-c", "import os; os.write(1, b'fd one\\n'); os.write(2, b'fd two\\n')"], check=True
        )
    finally:
        logger.removeHandler(handler)


def test_a_run_puts_everything_in_the_log_and_one_line_per_step_on_screen(tmp_path: Path) -> None:
    screen = io.StringIO()
    progress = PipelineProgress(tmp_path / "logs", tmp_path / "kfp", screen=Console(file=screen, width=100))
    with progress:
        progress.expect(2)
        _kfp_like_run(tmp_path / "kfp", fail=False)
    shown = screen.getvalue().splitlines()
    assert shown == [
        f"full log: {progress.log_path}",
        "✓ ingest             3.0 s  rows 39,173 (780 fraud, 1.99%)",
        "✓ train              2.0 s  best epoch 3/5, val loss 0.3818 on cpu",
    ]
    log = progress.log_path.read_text()
    for line in ("ingest stdout", "ingest stderr", "train stdout", "fd one", "fd two"):
        assert line in log
    print("back on the screen")  # the streams and descriptors are restored
    assert sys.stdout is not None and "back on the screen" not in progress.log_path.read_text()


def test_a_failed_run_shows_the_failing_steps_log_tail_and_the_log_path(tmp_path: Path) -> None:
    screen = io.StringIO()
    progress = PipelineProgress(tmp_path / "logs", tmp_path / "kfp", screen=Console(file=screen, width=100))
    with pytest.raises(RuntimeError, match="Inner task failed"), progress:
        _kfp_like_run(tmp_path / "kfp", fail=True)
    shown = [strip_ansi(line) for line in screen.getvalue().splitlines()]
    assert shown[1].startswith("✓ ingest")
    assert shown[2] == "✗ train              1.0 s  failed"
    assert "train: last 5 lines of its log" in shown[3]
    assert shown[4:9] == [
        "10:00:04.000 - INFO - Executing task 'train'",
        "    train stdout",
        "    train stderr",
        "    RuntimeError: loss is NaN",
        "10:00:05.000 - ERROR - Task 'train' finished with status FAILURE",
    ]
    assert shown[-1] == f"full log: {progress.log_path}"


def test_on_a_narrow_screen_a_step_stays_one_line(tmp_path: Path) -> None:
    screen = io.StringIO()
    progress = PipelineProgress(tmp_path / "logs", tmp_path / "kfp", screen=Console(file=screen, width=50))
    with progress:
        _kfp_like_run(tmp_path / "kfp", fail=False)
    shown = screen.getvalue().splitlines()
    assert len(shown) == 3 and shown[0] == f"full log: {progress.log_path}"  # the path is never cut
    assert shown[1] == "✓ ingest             3.0 s  rows 39,173 (780 frau…"
