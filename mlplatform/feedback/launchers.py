"""Launchers of retraining runs: a local child process, a Kubeflow Pipelines run, or a function (tests)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from mlplatform.orchestration.runner import compile_package, submit
from mlplatform.params import PipelineParams
from mlplatform.settings import PlatformSettings

log = logging.getLogger(__name__)


# --- launching runs


class RunHandle(Protocol):
    """A started retraining run."""

    run_id: str

    def state(self) -> Literal["running", "succeeded", "failed"]:
        """Where the run is now."""
        ...


class Launcher(Protocol):
    """Starts retraining runs (may block: it runs on the launcher thread, never in the HTTP handler)."""

    def launch(self, params: PipelineParams, run_name: str) -> RunHandle:
        """Start a run with these parameters.

        Raises:
            Exception: The run could not be created (counted as a failed run).
        """
        ...


@dataclass
class _ProcessRun:
    run_id: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def state(self) -> Literal["running", "succeeded", "failed"]:
        code = self.process.poll()
        return "running" if code is None else ("succeeded" if code == 0 else "failed")


class LocalLauncher:
    """Runs the local pipeline (`mlplatform run --no-serve`, kfp.local) in a child process per run.

    Args:
        platform: Work dir and MLflow of the runs (the child inherits the environment too).
        extra_args: Extra CLI arguments (tests).
    """

    def __init__(self, platform: PlatformSettings, extra_args: tuple[str, ...] = ()) -> None:
        self.platform = platform
        self.extra_args = extra_args

    def command(self, params: PipelineParams) -> list[str]:
        """The child's command line: every parameter as its CLI option."""
        args = [sys.executable, "-m", "mlplatform.cli", "run", "--no-serve"]
        args += ["--work-dir", str(self.platform.resolved_work_dir)]
        for name, value in params.model_dump().items():
            if value != "" and value is not None:
                args += [f"--{name.replace('_', '-')}", str(value)]
        return [*args, *self.extra_args]

    def launch(self, params: PipelineParams, run_name: str) -> RunHandle:
        log_dir = self.platform.resolved_work_dir / "retraining"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{run_name}.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(self.command(params), stdout=out, stderr=subprocess.STDOUT)
        log.info("started local retraining run %s (pid %s), log %s", run_name, process.pid, log_path)
        return _ProcessRun(run_name, process, log_path)


#: KFP v2beta1 run states that are final.
KFP_SUCCEEDED = {"SUCCEEDED"}
KFP_FAILED = {"FAILED", "CANCELED", "CANCELING", "SKIPPED"}


@dataclass
class _KfpRun:
    run_id: str
    client: Any

    def state(self) -> Literal["running", "succeeded", "failed"]:
        state = str(getattr(self.client.get_run(self.run_id), "state", "") or "").upper()
        if state in KFP_SUCCEEDED:
            return "succeeded"
        return "failed" if state in KFP_FAILED else "running"


class KfpLauncher:
    """Creates runs of the compiled pipeline on the Kubeflow Pipelines API (`mlplatform.orchestration.runner.submit`).

    Args:
        host: KFP API endpoint.
        experiment: Experiment of the runs.
        package: Compiled pipeline YAML; compiled into a temporary folder at the first launch when None.
        client: A `kfp.Client` (tests pass a stand-in for the KFP backend); one for `host` otherwise.
    """

    def __init__(self, host: str, experiment: str, package: Path | None = None, client: Any | None = None) -> None:
        self.host = host
        self.experiment = experiment
        self.package = package
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import kfp

            self._client = kfp.Client(host=self.host)
        return self._client

    def launch(self, params: PipelineParams, run_name: str) -> RunHandle:
        if self.package is None:
            self.package = compile_package()
        run_id = submit(self.host, self.package, params, self.experiment, run_name, client=self.client)
        log.info("created KFP run %s (%s) on %s", run_id, run_name, self.host)
        return _KfpRun(run_id, self.client)


@dataclass
class _ThreadRun:
    run_id: str
    thread: threading.Thread
    error: list[BaseException] = field(default_factory=list)

    def state(self) -> Literal["running", "succeeded", "failed"]:
        if self.thread.is_alive():
            return "running"
        return "failed" if self.error else "succeeded"


class FunctionLauncher:
    """Runs `fn(params)` on a thread per run: for embedding the loop in one process, and for tests."""

    def __init__(self, fn: Callable[[PipelineParams], Any]) -> None:
        self.fn = fn

    def launch(self, params: PipelineParams, run_name: str) -> RunHandle:
        run = _ThreadRun(run_name, threading.Thread(target=lambda: None))

        def target() -> None:
            try:
                self.fn(params)
            except BaseException as exc:  # recorded as a failed run
                log.exception("retraining run %s failed", run_name)
                run.error.append(exc)

        run.thread = threading.Thread(target=target, name=f"retrain-{run_name}", daemon=True)
        run.thread.start()
        return run
