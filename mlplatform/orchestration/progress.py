"""A quiet local pipeline run: the executors' logs go to a file, the screen gets one line per finished step."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rich.console import Console
from rich.progress import Progress, ProgressColumn, SpinnerColumn, Task, TextColumn
from rich.text import Text

#: Lines of the failing step's log shown on screen when the run fails.
TAIL_LINES = 40
#: How often the log file is read for new lines.
POLL_SECONDS = 0.2
#: Width of the step-name column (the longest task name of the training pipeline is `deploy-canary`).
NAME_WIDTH = 14
SECONDS_PER_DAY = 86_400

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: A record of kfp.local's own logger (kfp.local.logging_utils.local_logger_context): `HH:MM:SS.mmm - LEVEL - text`.
_RECORD = re.compile(r"^(?P<clock>\d{2}:\d{2}:\d{2}\.\d{3}) - (?P<level>[A-Z]+) - (?P<message>.*)$")
_EVENTS = (
    ("start", re.compile(r"^Executing task '(?P<task>[^']+)'")),
    ("finish", re.compile(r"^Task '(?P<task>[^']+)' finished with status (?P<status>SUCCESS|FAILURE)")),
    (
        "retry",
        re.compile(
            r"^Task (?P<task>\S+) failed \(attempt (?P<attempt>\d+)/(?P<attempts>\d+)\)\. "
            r"Retrying in (?P<delay>[\d.]+)s"
        ),
    ),
    ("cached", re.compile(r"^Task (?P<task>\S+) cache hit")),
)


#: The KFP executor logs its input as indented JSON between these two lines.
_EXECUTOR_INPUT = "]: Got executor_input:"
_EXECUTOR_INPUT_END = "    }"
#: A warning of kfp.local's (non-Python image, resource settings a local run ignores), as Python prints it.
_KFP_LOCAL_WARNING = re.compile(r"/kfp/local/\S+\.py:\d+: \w+Warning: ")
#: The KFP executor's own records (which component it loads, where it wrote its output).
_KFP_EXECUTOR = "[KFP Executor "


def strip_ansi(text: str) -> str:
    """`text` without terminal colour codes (kfp.local colours task names and statuses)."""
    return _ANSI.sub("", text)


@dataclass(frozen=True)
class StepEvent:
    """A step's state change, read from one of kfp.local's log records.

    Attributes:
        kind: start, success, failure, retry (a failed attempt will be retried) or cached.
        task: The task name (`ingest`, `training-set`, `deploy-canary`, ...).
        clock: Seconds since midnight, from the record's time stamp.
        detail: For a retry: which attempt failed and when the next one starts.
    """

    kind: str
    task: str
    clock: float
    detail: str = ""


def parse_event(line: str) -> StepEvent | None:
    """The step event in one line of the run's log; None for any other line (executor output included)."""
    record = _RECORD.match(strip_ansi(line).rstrip())
    if record is None:
        return None
    hours, minutes, seconds = record["clock"].split(":")
    clock = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    message = record["message"]
    for kind, pattern in _EVENTS:
        match = pattern.match(message)
        if match is None:
            continue
        if kind == "finish":
            kind = "success" if match["status"] == "SUCCESS" else "failure"
        detail = ""
        if kind == "retry":
            detail = f"attempt {match['attempt']}/{match['attempts']} failed, retrying in {float(match['delay']):g} s"
        return StepEvent(kind, match["task"], clock, detail)
    return None


def format_duration(seconds: float) -> str:
    """`12.3 s` under a minute, `3 min 05 s` above."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def step_line(task: str, status: str, seconds: float | None, figure: str = "") -> Text:
    """One screen line for a finished step: mark, name, duration, key figure.

    Args:
        status: success, failure or cached.
        seconds: How long it ran; None when unknown.
    """
    mark, style = {"success": ("✓", "green"), "failure": ("✗", "bold red"), "cached": ("✓", "dim green")}[status]
    duration = "cached" if status == "cached" else ("" if seconds is None else format_duration(seconds))
    line = Text.assemble((mark, style), " ", (task.ljust(NAME_WIDTH), "bold"), duration.rjust(10))
    if status == "failure":
        line.append("  failed", style="red")
    if figure:
        line.append(f"  {figure}")
    return line


# What each step of the training pipeline reports, read from its executor output (kfp's executor_output.json:
# parameterValues holds the returned values, artifacts the output artifacts with their metadata).


def _param(output: dict[str, Any], name: str = "Output") -> Any:
    return output["parameterValues"][name]


def _json_param(output: dict[str, Any], name: str = "Output") -> dict[str, Any]:
    return json.loads(_param(output, name))


def _metadata(output: dict[str, Any], artifact: str) -> dict[str, Any]:
    return output["artifacts"][artifact]["artifacts"][0]["metadata"]


def _ingest(output: dict[str, Any]) -> str:
    result = _json_param(output)
    rows, fraud = int(result["rows"]), int(result["fraud_rows"])
    return f"rows {rows:,} ({fraud:,} fraud, {fraud / max(rows, 1):.2%})"


def _features(output: dict[str, Any]) -> str:
    state = _metadata(output, "feature_state")
    return f"{len(state['applied'])} feature objects, online store to {state['materialized_until'][:10]}"


def _training_set(output: dict[str, Any]) -> str:
    split = _metadata(output, "train")
    return (
        f"rows train {int(split['train_rows']):,} / validation {int(split['validation_rows']):,}"
        f" / test {int(split['test_rows']):,}"
    )


def _validate(output: dict[str, Any]) -> str:
    report = _metadata(output, "report")
    warnings = len(report.get("warnings") or [])
    figure = f"{int(report['checks'])} checks passed"
    return figure + (f", {warnings} warning{'s' * (warnings != 1)}" if warnings else "")


def _train(output: dict[str, Any]) -> str:
    model = _metadata(output, "model")
    device = f" on {model['device']}" if model.get("device") else ""
    epochs = f"best epoch {int(model['best_epoch'])}/{int(model['epochs_run'])}"
    return f"{epochs}, val loss {model['best_val_loss']:.4f}{device}"


def _evaluate(output: dict[str, Any]) -> str:
    report = _json_param(output)
    figure = f"test PR-AUC {report['model']['pr_auc']:.4f}, baseline {report['baseline']['pr_auc']:.4f}"
    if "champion" in report:
        figure += f", champion {report['champion']['pr_auc']:.4f}"
    return figure


def _register(output: dict[str, Any]) -> str:
    summary = _json_param(output, "summary")
    if not _param(output, "registered"):
        return "rejected: " + "; ".join(summary.get("reasons") or [])
    return f"registered version {_param(output, 'version')} ({', '.join(summary.get('aliases') or [])})"


def _deploy(output: dict[str, Any]) -> str:
    deployment = _json_param(output)["deployment"]
    action, outcome, version = deployment["action"], deployment.get("outcome", ""), deployment.get("version", "")
    if action == "nothing":
        return "nothing to deploy"
    if action == "deployed":
        return f"version {version} deployed as champion" if outcome == "deployed" else f"version {version}: {outcome}"
    return f"rollout of version {version}: {outcome.replace('_', ' ')}"


KEY_FIGURES: dict[str, Callable[[dict[str, Any]], str]] = {
    "ingest": _ingest,
    "features": _features,
    "training-set": _training_set,
    "validate-data": _validate,
    "train": _train,
    "train-distributed": _train,
    "evaluate": _evaluate,
    "register": _register,
    "deploy-canary": _deploy,
}


def key_figure(task: str, output: dict[str, Any] | None) -> str:
    """The figure a finished step is known by (rows, PR-AUC, version, rollout outcome); "" when there is none."""
    describe = KEY_FIGURES.get(task)
    if describe is None or not output:
        return ""
    try:
        return describe(output)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):  # an output of another shape: no figure
        return ""


class StepTracker:
    """Follows kfp.local's log records and says what to print when a step finishes.

    Args:
        outputs: The executor output (parsed executor_output.json) of a finished task, None when not found.
    """

    def __init__(self, outputs: Callable[[str], dict[str, Any] | None]) -> None:
        self._outputs = outputs
        self._started: dict[str, float] = {}
        self.running: str | None = None
        self.finished = 0
        self.failed: str | None = None

    def feed(self, event: StepEvent) -> list[Text]:
        """The lines to print for `event` (none for a start)."""
        if event.kind == "start":
            self._started[event.task] = event.clock
            self.running = event.task
            return []
        if event.kind == "retry":
            return [Text(f"  ↻ {event.task}: {event.detail}", style="yellow")]
        self.running = None if self.running == event.task else self.running
        if event.kind == "cached":
            self.finished += 1
            return [step_line(event.task, "cached", None, key_figure(event.task, self._outputs(event.task)))]
        seconds = None
        if event.task in self._started:
            seconds = (event.clock - self._started[event.task]) % SECONDS_PER_DAY  # a run past midnight
        if event.kind == "failure":
            self.failed = event.task
            return [step_line(event.task, "failure", seconds)]
        self.finished += 1
        self.failed = None
        return [step_line(event.task, "success", seconds, key_figure(event.task, self._outputs(event.task)))]


def step_log_tail(text: str, lines: int = TAIL_LINES) -> list[str]:
    """The last `lines` lines of the last step's part of a run log.

    Without colour codes, blank lines, kfp.local's rulers and warnings (image, resource settings), and the
    executor's dump of its input (JSON).
    """
    kept: list[str] = []
    in_input_dump = warning_source = False
    for raw in text.splitlines():
        line = strip_ansi(raw).rstrip()
        if in_input_dump:
            in_input_dump = line != _EXECUTOR_INPUT_END
        elif warning_source:  # the source line Python prints under a warning
            warning_source = False
        elif _EXECUTOR_INPUT in line:
            in_input_dump = True
        elif _KFP_LOCAL_WARNING.search(line):
            warning_source = True
        elif line.strip() and set(line.strip()) != {"-"}:
            kept.append(line)
    starts = [i for i, line in enumerate(kept) if (event := parse_event(line)) and event.kind == "start"]
    section = kept[starts[-1] :] if starts else kept
    return section[-lines:]


def new_log_path(log_dir: Path, now: datetime | None = None) -> Path:
    """`<log_dir>/pipeline-<YYYYmmdd-HHMMSS>.log`, with a suffix when that name is taken."""
    stem = f"pipeline-{(now or datetime.now()):%Y%m%d-%H%M%S}"
    path, n = log_dir / f"{stem}.log", 1
    while path.exists():
        n += 1
        path = log_dir / f"{stem}-{n}.log"
    return path


class _StepElapsed(ProgressColumn):
    """How long the running step has been running."""

    def render(self, task: Task) -> Text:
        started = task.fields.get("step_started")
        return Text("" if started is None else format_duration(time.monotonic() - started), style="cyan")


class PipelineProgress:
    """Context manager around a kfp.local run: everything written to stdout and stderr (kfp.local's records,
    each executor's streamed output) goes to a log file; the screen gets the log's path, one line per finished
    step with its key figure, and a spinner with the running step; on failure the failing step's log tail.

    Both levels are redirected: the file descriptors 1 and 2 (anything in this process or its children that
    writes to them) and `sys.stdout`/`sys.stderr` (kfp.local prints its subprocesses' output through them).

    Args:
        log_dir: Folder of the log file (created when missing).
        pipeline_root: kfp.local's pipeline root, where each run's task outputs are.
        tail_lines: Lines of the failing step's log to show.
        screen: Where the step lines go; by default the terminal that stdout was before the redirect.
    """

    def __init__(
        self, log_dir: Path, pipeline_root: Path, tail_lines: int = TAIL_LINES, screen: Console | None = None
    ) -> None:
        self.log_path = new_log_path(log_dir)
        self.pipeline_root = pipeline_root
        self.tail_lines = tail_lines
        self.total: int | None = None
        self.tracker = StepTracker(self._task_outputs)
        self.console = screen
        self._runs_before: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress: Progress | None = None
        self._bar: Any = None
        self._log: IO[str] | None = None
        self._screen: IO[str] | None = None
        self._saved_fds: dict[int, int] = {}
        self._in_input_dump = False
        self._saved_streams: tuple[Any, Any] = (sys.stdout, sys.stderr)  # set again on entering

    def expect(self, steps: int) -> None:
        """Announce how many steps the pipeline has (shown next to the spinner)."""
        self.total = steps

    def __enter__(self) -> PipelineProgress:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.pipeline_root.is_dir():
            self._runs_before = {p.name for p in self.pipeline_root.iterdir()}
        self._redirect()
        assert self.console is not None
        self.console.print(f"full log: {self.log_path}", highlight=False, soft_wrap=True)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            _StepElapsed(),
            TextColumn("{task.fields[latest]}", markup=False, style="dim"),
            console=self.console,
            transient=True,
            disable=not self.console.is_interactive,  # no spinner in a file or a pipe, only the step lines
            redirect_stdout=False,  # sys.stdout and sys.stderr go to the log file
            redirect_stderr=False,
        )
        self._progress.start()
        self._bar = self._progress.add_task("starting", total=None, step_started=None, latest="")
        self._thread = threading.Thread(target=self._watch, name="pipeline-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._progress is not None:
            self._progress.stop()
        self._restore()
        assert self.console is not None
        try:
            if isinstance(exc, Exception):
                self.print_failure()
            elif exc is not None:
                self.console.print(f"interrupted; full log: {self.log_path}", highlight=False, soft_wrap=True)
        finally:
            if self._screen is not None:
                self._screen.close()

    def print_failure(self) -> None:
        """The failing step's log tail and where the whole log is."""
        assert self.console is not None
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        tail = step_log_tail(text, self.tail_lines)
        if tail:
            failed = self.tracker.failed
            title = f"{failed}: last {len(tail)} lines of its log" if failed else f"last {len(tail)} lines of the log"
            self.console.rule(f"[red]{title}")
            for line in tail:  # as in the log: a long line is the terminal's to wrap
                self.console.print(Text(line), highlight=False, no_wrap=True, overflow="ignore", crop=False)
            self.console.rule(style="red")
        self.console.print(f"full log: {self.log_path}", highlight=False, soft_wrap=True)

    def _redirect(self) -> None:
        self._saved_streams = (sys.stdout, sys.stderr)
        for stream in self._saved_streams:
            stream.flush()
        self._log = open(self.log_path, "a", encoding="utf-8", errors="replace", buffering=1)  # noqa: SIM115 - held from __enter__ to __exit__, which closes it
        if self.console is None:
            self.console = Console(file=self._open_screen())
        for fd in (1, 2):
            try:
                self._saved_fds[fd] = os.dup(fd)
            except OSError:
                continue
            os.dup2(self._log.fileno(), fd)
        sys.stdout = sys.stderr = self._log

    def _open_screen(self) -> Any:
        """A stream to the terminal that stdout is now, still writing there once fd 1 goes to the log."""
        try:
            if sys.stdout.fileno() == 1:
                encoding = sys.stdout.encoding or "utf-8"
                self._screen = os.fdopen(os.dup(1), "w", encoding=encoding, errors="replace", buffering=1)
                return self._screen
        except (AttributeError, OSError, ValueError):  # not a file (a test runner's capture): that stream stays
            pass
        return sys.stdout

    def _restore(self) -> None:
        if self._log is not None:
            self._log.flush()
        sys.stdout, sys.stderr = self._saved_streams
        for fd, saved in self._saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        self._saved_fds.clear()
        if self._log is not None:
            self._log.close()

    def _task_outputs(self, task: str) -> dict[str, Any] | None:
        """The executor output of `task` in the run this context started (a new folder under the pipeline root)."""
        found = [
            path
            for path in self.pipeline_root.glob(f"*/{task}/executor_output.json")
            if path.parent.parent.name not in self._runs_before
        ]
        if not found:
            return None
        try:
            return json.loads(max(found, key=lambda p: p.stat().st_mtime).read_text())
        except (OSError, ValueError):
            return None

    def _watch(self) -> None:
        """Read the log as it grows; print a line per finished step, keep the spinner on the running one."""
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            pending = ""
            while True:
                stopping = self._stop.is_set()
                pending += log.read()
                *lines, pending = pending.split("\n")
                for line in lines:
                    self._handle(line)
                if stopping:
                    if pending:
                        self._handle(pending)
                    return
                self._stop.wait(POLL_SECONDS)

    def _handle(self, line: str) -> None:
        assert self._progress is not None and self.console is not None
        event = parse_event(line)
        if event is None:
            plain = strip_ansi(line).rstrip()
            if self._in_input_dump:
                self._in_input_dump = plain != _EXECUTOR_INPUT_END
            elif _EXECUTOR_INPUT in plain:
                self._in_input_dump = True
            elif self.tracker.running and plain.startswith("    ") and plain.strip() and _KFP_EXECUTOR not in plain:
                self._progress.update(self._bar, latest=_latest(plain, self.console.width))
            return
        for text in self.tracker.feed(event):
            self._progress.console.print(text, no_wrap=True, overflow="ellipsis")  # one screen line each
        if event.kind == "start":
            count = f"[{self.tracker.finished + 1}/{self.total}] " if self.total else ""
            self._progress.update(
                self._bar, description=f"{count}{event.task}", step_started=time.monotonic(), latest=""
            )
        elif self.tracker.running is None:
            self._progress.update(self._bar, description="", step_started=None, latest="")


def _latest(line: str, width: int) -> str:
    """An executor output line, shortened for the spinner."""
    text = line.strip()
    room = max(width - NAME_WIDTH - 30, 10)
    return text if len(text) <= room else text[: room - 1] + "…"
