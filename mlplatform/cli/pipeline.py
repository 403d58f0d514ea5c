"""`mlplatform pipeline`: compile the training pipeline, submit a run, or schedule retraining on Kubeflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mlplatform.cli.common import (
    BatchSize,
    Drift,
    FraudRate,
    LearningRate,
    MaxEpochs,
    NDays,
    NTransactions,
    Seed,
    SourcePath,
    TestDays,
    Trigger,
    TuningRunId,
    ValidationDays,
    WarmupDays,
    console,
    guarded,
    pipeline_params,
)
from mlplatform.errors import ConfigError
from mlplatform.orchestration.runner import compile_package, schedule, submit

pipeline_app = typer.Typer(help="Compile or submit the training pipeline.", no_args_is_help=True)


@pipeline_app.command("compile")
@guarded
def pipeline_compile(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the IR YAML.")] = Path(
        "build/training_pipeline.yaml"
    ),
) -> None:
    """Compile the training pipeline to KFP IR YAML (upload it in the Kubeflow UI)."""

    path = compile_package(output)
    console.print(f"compiled the training pipeline to {path}")


@pipeline_app.command("submit")
@guarded
def pipeline_submit(
    host: Annotated[
        str,
        typer.Option("--host", help="Kubeflow Pipelines API endpoint, e.g. http://localhost:8888."),
    ],
    experiment: Annotated[
        str, typer.Option("--experiment", help="KFP experiment to file the run under.")
    ] = "fraud-detection",
    run_name: Annotated[str | None, typer.Option("--run-name", help="Name of the run.")] = None,
    package: Annotated[
        Path | None,
        typer.Option("--package", help="Compiled pipeline YAML (compiled now if omitted)."),
    ] = None,
    n_transactions: NTransactions = None,
    n_days: NDays = None,
    seed: Seed = None,
    fraud_rate: FraudRate = None,
    drift: Drift = None,
    source_path: SourcePath = None,
    validation_days: ValidationDays = None,
    test_days: TestDays = None,
    warmup_days: WarmupDays = None,
    max_epochs: MaxEpochs = None,
    batch_size: BatchSize = None,
    learning_rate: LearningRate = None,
    trigger: Trigger = None,
    tuning_run_id: TuningRunId = None,
) -> None:
    """Create a run of the training pipeline on a Kubeflow Pipelines endpoint."""
    from urllib.parse import urlparse

    options = dict(locals())
    parsed = urlparse(host)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"--host must be an http(s) URL such as http://localhost:8888, got {host!r}")
    params = pipeline_params(options)
    if package is not None and not package.is_file():
        raise ConfigError(f"--package {package} does not exist")
    pkg = package or compile_package()
    run_id = submit(host, pkg, params, experiment, run_name)
    # Plain print: one unwrapped JSON line that scripts can parse.
    print(json.dumps({"run_id": run_id, "host": host, "experiment": experiment}))


@pipeline_app.command("schedule")
@guarded
def pipeline_schedule(
    host: Annotated[str, typer.Option("--host", help="Kubeflow Pipelines API endpoint, e.g. http://localhost:8888.")],
    cron: Annotated[
        str, typer.Option("--cron", help="KFP cron, six fields with seconds first: '0 0 3 * * *' is 03:00 daily.")
    ] = "0 0 3 * * 1",
    name: Annotated[str, typer.Option("--name", help="Name of the recurring run.")] = "fraud-retraining",
    experiment: Annotated[str, typer.Option("--experiment", help="KFP experiment of the runs.")] = "fraud-detection",
    package: Annotated[
        Path | None, typer.Option("--package", help="Compiled pipeline YAML (compiled now if omitted).")
    ] = None,
    n_transactions: NTransactions = None,
    n_days: NDays = None,
    seed: Seed = None,
    max_epochs: MaxEpochs = None,
) -> None:
    """Create a recurring run on Kubeflow Pipelines: scheduled retraining (trigger=schedule)."""

    options = {"n_transactions": n_transactions, "n_days": n_days, "seed": seed, "max_epochs": max_epochs}
    params = pipeline_params({**options, "trigger": "schedule"})
    if package is not None and not package.is_file():
        raise ConfigError(f"--package {package} does not exist")
    pkg = package or compile_package()
    recurring_run_id = schedule(host, pkg, params, experiment, name, cron)
    print(json.dumps({"recurring_run_id": recurring_run_id, "host": host, "cron": cron, "name": name}))
