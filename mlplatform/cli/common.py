"""What every command group shares: the consoles, the error exit, and the options that mean the same everywhere."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console

from mlplatform.errors import ConfigError, MlPlatformError
from mlplatform.params import PipelineParams, parse_params

P = ParamSpec("P")
R = TypeVar("R")

console = Console()
err_console = Console(stderr=True)


def fail(exc: Exception | str) -> NoReturn:
    """Print a clear one-line error (the message names what was wrong) and exit with status 2."""
    err_console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)


def guarded(command: Callable[P, R]) -> Callable[P, R]:
    """A command whose platform errors (every typed error joins `MlPlatformError`) end in `fail`, not a traceback.

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except MlPlatformError as exc:
            fail(exc)

    return run


def parse_time(text: str, option: str) -> datetime:
    """An ISO-8601 time given to `option` (UTC when it names no zone).

    Raises:
        ConfigError: Naming the option and the expected format.
    """
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not an ISO-8601 time such as 2026-11-30T12:00:00") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def pipeline_params(options: dict[str, Any]) -> PipelineParams:
    """The pipeline parameters among a command's options; an option left out keeps the pipeline default."""
    return parse_params({k: v for k, v in options.items() if k in PipelineParams.model_fields and v is not None})


# Options shared by `run`, `pipeline submit` and `pipeline schedule`; None means "the pipeline's default".
# Options shared by `run` and `pipeline submit`; None means "the pipeline's default".
NTransactions = Annotated[int | None, typer.Option("--n-transactions", help="Transactions to generate (>= 1000).")]
NDays = Annotated[int | None, typer.Option("--n-days", help="Days the transactions span (>= 7).")]
Seed = Annotated[int | None, typer.Option("--seed", help="Seed of the generator and of training.")]
FraudRate = Annotated[float | None, typer.Option("--fraud-rate", help="Share of fraud to generate (0.001-0.2).")]
Drift = Annotated[float | None, typer.Option("--drift", help="Distribution shift to generate (0-1).")]
SourcePath = Annotated[str | None, typer.Option("--source-path", help="Existing raw Parquet snapshot to use.")]
ValidationDays = Annotated[int | None, typer.Option("--validation-days", help="Days for validation.")]
TestDays = Annotated[int | None, typer.Option("--test-days", help="Last days held out for the test.")]
WarmupDays = Annotated[
    int | None, typer.Option("--warmup-days", help="First days left out of training (aggregates still filling).")
]
MaxEpochs = Annotated[int | None, typer.Option("--max-epochs", help="Upper bound on training epochs.")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="Rows per training step.")]
LearningRate = Annotated[float | None, typer.Option("--learning-rate", help="AdamW learning rate.")]
TuningRunId = Annotated[
    str | None,
    typer.Option("--tuning-run-id", help="MLflow run id of `mlplatform tune`: train with its best hyperparameters."),
]
Trigger = Annotated[
    str | None,
    typer.Option("--trigger", help="Why the run starts (manual, schedule, alert:<name>@<fingerprint>); an MLflow tag."),
]

WorkDir = Annotated[
    Path | None,
    typer.Option("--work-dir", help="Folder of local state (default: MLPLATFORM_WORK_DIR, else .mlplatform)."),
]
Alias = Annotated[str, typer.Option("--alias", help="Registry alias to deploy (models:/fraud-detector@ALIAS).")]
Target = Annotated[
    str | None, typer.Option("--target", help="local or cluster (default: MLPLATFORM_DEPLOY_TARGET, local).")
]
