"""`mlplatform tune`: search the train step's hyperparameters (Optuna here, a Katib Experiment on a cluster);
`mlplatform train`: the train step on a training set, the command each Katib trial runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.table import Table

from mlplatform import registry
from mlplatform.cli.common import WorkDir, console, guarded
from mlplatform.errors import ConfigError
from mlplatform.settings import PlatformSettings, load_settings

if TYPE_CHECKING:  # torch and optuna load when a command runs, not with every CLI invocation (`mlplatform serve`)
    from mlplatform.training import katib, tuning

TrainingSet = Annotated[
    Path | None,
    typer.Option("--training-set", help="Folder with train.parquet and validation.parquet (the training-set step's)."),
]
TrainPath = Annotated[Path | None, typer.Option("--train", help="Training split (Parquet); instead of --training-set.")]
ValidationPath = Annotated[
    Path | None, typer.Option("--validation", help="Validation split (Parquet); instead of --training-set.")
]


def _splits(training_set: Path | None, train: Path | None, validation: Path | None) -> tuple[Path, Path]:
    """The training and validation files the options name; ConfigError naming the option that is wrong."""
    if training_set is not None:
        if train is not None or validation is not None:
            raise ConfigError("give either --training-set or --train and --validation, not both")
        if not training_set.is_dir():
            raise ConfigError(f"--training-set {training_set} is not a folder")
        train, validation = training_set / "train.parquet", training_set / "validation.parquet"
    if train is None or validation is None:
        raise ConfigError("name the data: --training-set DIR, or both --train and --validation")
    for option, path in (("--train", train), ("--validation", validation)):
        if not path.is_file():
            raise ConfigError(f"{option} {path} does not exist (expected a Parquet file)")
    return train, validation


def _read(path: Path, option: str) -> Any:
    import pandas as pd
    from pyarrow import ArrowInvalid

    try:
        return pd.read_parquet(path)
    except (ArrowInvalid, OSError) as exc:
        raise ConfigError(f"{option} {path} is not a readable Parquet file: {exc}") from None


@guarded
def tune(
    training_set: TrainingSet = None,
    train: TrainPath = None,
    validation: ValidationPath = None,
    trials: Annotated[int, typer.Option("--trials", help="Trials (the first is the current defaults).")] = 12,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Seconds after which no new trial starts (the trials then depend on speed)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampler and of every trial's training.")] = 42,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    work_dir: WorkDir = None,
    katib_out: Annotated[
        Path | None,
        typer.Option("--katib-out", help="Write a Katib Experiment (YAML) for the cluster instead of searching here."),
    ] = None,
    katib_name: Annotated[str, typer.Option("--katib-name", help="Name of the Katib Experiment.")] = "fraud-tuning",
    katib_namespace: Annotated[
        str, typer.Option("--katib-namespace", help="Namespace of the Experiment and its trial Jobs.")
    ] = "mlplatform",
    katib_claim: Annotated[
        str, typer.Option("--katib-claim", help="ReadWriteMany claim holding the training set.")
    ] = "mlplatform-training-shared",
    katib_data_dir: Annotated[
        str | None,
        typer.Option("--katib-data-dir", help="Folder of train.parquet and validation.parquet inside the claim."),
    ] = None,
    katib_parallel: Annotated[int, typer.Option("--katib-parallel", help="Trials Katib runs at once.")] = 3,
    katib_gpus: Annotated[int, typer.Option("--katib-gpus", help="GPUs per trial (0: CPU).")] = 0,
    katib_result: Annotated[
        Path | None,
        typer.Option(
            "--katib-result",
            help="A finished Experiment (kubectl get experiment NAME -o yaml): record its best trial in its "
            "MLflow parent run, so that a pipeline run can use it.",
        ),
    ] = None,
) -> None:
    """Search the train step's hyperparameters on the validation window; print the best and the MLflow run id.

    The id goes to the next pipeline run: `mlplatform run --tuning-run-id ID` trains with the best configuration.
    """
    from mlplatform.training import katib, tuning  # torch and optuna, for this command only

    settings = load_settings(PlatformSettings, work_dir=work_dir)
    if katib_result is not None:
        _record_katib(katib_result, settings)
        return
    if katib_out is not None:
        _render_katib(
            katib_out,
            settings,
            katib_name,
            katib_namespace,
            katib_claim,
            katib_data_dir,
            katib.ExperimentOptions(
                max_trials=trials,
                parallel_trials=min(katib_parallel, trials),
                max_failed_trials=min(3, trials),
                seed=seed,
                gpus=katib_gpus,
            ),
        )
        return
    options = tuning.TuneOptions(trials=trials, timeout_seconds=timeout, seed=seed, device=device)
    train_path, validation_path = _splits(training_set, train, validation)
    train_frame, validation_frame = _read(train_path, "--train"), _read(validation_path, "--validation")
    experiment_id = registry.configure(settings)
    console.print(f"tuning: {trials} trials, seed {seed}, on {len(train_frame):,} training rows")
    result = tuning.tune(train_frame, validation_frame, experiment_id, options)
    print_result(result)


def print_result(result: tuning.TuneResult) -> None:
    """The trials, the best configuration and the parent run id."""
    from mlplatform.training import search_space, tuning  # torch and optuna, for this command only

    short = {"learning_rate": "lr", "weight_decay": "wd", "hidden_width": "width", "batch_size": "batch"}
    names = [p.name for p in search_space.SEARCH_SPACE]
    table = Table("#", "state", "val PR-AUC", "epochs", *(short.get(n, n.replace("_", " ")) for n in names))
    for t in result.trials:
        value = "" if t.value is None or math.isnan(t.value) else f"{t.value:.4f}"
        table.add_row(str(t.number), t.state, value, str(t.epochs), *(f"{t.params[n]:.3g}" for n in names))
    console.print(table)
    default = "n/a" if result.default_value is None else f"{result.default_value:.4f}"
    console.print(
        f"best trial {result.best_trial}: {tuning.OBJECTIVE_METRIC} {result.best_value:.4f} (defaults: {default}); "
        f"{result.pruned} pruned; {result.wall_seconds:.0f} s"
    )
    console.print(f"best configuration: {json.dumps(result.best_params)}", highlight=False, soft_wrap=True)
    console.print(
        f"tuning run id: {result.parent_run_id}  (use: mlplatform run --tuning-run-id {result.parent_run_id})",
        soft_wrap=True,
    )


def _render_katib(
    out: Path,
    settings: PlatformSettings,
    name: str,
    namespace: str,
    claim: str,
    data_dir: str | None,
    options: katib.ExperimentOptions,
) -> None:
    from mlplatform.training import katib, tuning  # torch and optuna, for this command only
    from pipelines.training import (  # deferred: KFP loads for --katib-out only
        MLFLOW_CREDENTIALS_ENV,
        MLFLOW_CREDENTIALS_SECRET,
        SETTINGS_CONFIG_MAP,
    )

    if not data_dir:
        raise ConfigError("--katib-out needs --katib-data-dir: the training set's folder inside --katib-claim")
    experiment_id = registry.configure(settings)
    parent = tuning.start_cluster_search(experiment_id, f"katib-{name}", options.seed, name)
    body = katib.render_experiment(
        name=name,
        namespace=namespace,
        image=settings.component_image,
        pvc_name=claim,
        data_dir=data_dir,
        parent_run_id=parent,
        options=options,
        settings_config_map=SETTINGS_CONFIG_MAP,
        credentials_secret=MLFLOW_CREDENTIALS_SECRET,
        credentials_env=MLFLOW_CREDENTIALS_ENV,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(body, sort_keys=False))
    console.print(f"Katib Experiment {namespace}/{name} written to {out}; MLflow parent run {parent}")
    console.print(
        f"next: kubectl apply -f {out}; when it has finished, kubectl get experiment {name} -n {namespace} "
        f"-o yaml > result.yaml and mlplatform tune --katib-result result.yaml"
    )


def _record_katib(path: Path, settings: PlatformSettings) -> None:
    from mlplatform.training import katib, tuning  # torch and optuna, for this command only

    if not path.is_file():
        raise ConfigError(f"--katib-result {path} does not exist")
    try:
        experiment = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"--katib-result {path} is not YAML or JSON: {exc}") from None
    if not isinstance(experiment, dict) or experiment.get("kind") != katib.KIND:
        raise ConfigError(f"--katib-result {path} is not a Katib Experiment")
    parent = ((experiment.get("metadata") or {}).get("annotations") or {}).get(katib.PARENT_RUN_ANNOTATION)
    if not parent:
        raise ConfigError(f"--katib-result {path}: no {katib.PARENT_RUN_ANNOTATION} annotation (not rendered by tune)")
    best = katib.best_trial(experiment)
    registry.configure(settings)
    seed = int(
        next(
            (
                s["value"]
                for s in experiment["spec"]["algorithm"].get("algorithmSettings", [])
                if s["name"] == "random_state"
            ),
            0,
        )
    )
    tuning.record_cluster_search(parent, best.params, best.value, best.name, seed, best.trials)
    console.print(f"best trial {best.name}: {tuning.OBJECTIVE_METRIC} {best.value:.4f}, {json.dumps(best.params)}")
    console.print(f"tuning run id: {parent}  (use: mlplatform run --tuning-run-id {parent})", soft_wrap=True)


@guarded
def train(
    training_set: TrainingSet = None,
    train: TrainPath = None,
    validation: ValidationPath = None,
    model_dir: Annotated[Path, typer.Option("--model-dir", help="Where the trained model is written.")] = Path("model"),
    learning_rate: Annotated[
        float | None, typer.Option("--learning-rate", help="AdamW learning rate (default: the train step's).")
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option("--weight-decay", help="AdamW weight decay (default: the train step's).")
    ] = None,
    hidden_width: Annotated[int, typer.Option("--hidden-width", help="Width of the first hidden layer.")] = 64,
    depth: Annotated[int, typer.Option("--depth", help="Hidden layers (each half as wide as the one before).")] = 2,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Rows per step (default: the train step's).")
    ] = None,
    max_epochs: Annotated[
        int | None, typer.Option("--max-epochs", help="Upper bound on epochs (default: the train step's).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of every random generator (default: the train step's).")
    ] = None,
    run_name: Annotated[str | None, typer.Option("--run-name", help="MLflow run name.")] = None,
    parent_run_id: Annotated[
        str | None, typer.Option("--parent-run-id", help="MLflow run this one is a child of (a tuning search).")
    ] = None,
    work_dir: WorkDir = None,
) -> None:
    """Run the train step on a training set; print `val_pr_auc=...` and `best_val_loss=...` (read by Katib)."""
    from components.train.step import run_train  # deferred: the train step's stack loads for this command only
    from mlplatform.training import search_space, tuning  # torch and optuna, for this command only
    from mlplatform.training.loop import TrainConfig  # torch, for this command only

    settings = load_settings(PlatformSettings, work_dir=work_dir)
    train_path, validation_path = _splits(training_set, train, validation)
    if not 1 <= depth <= 8 or not 1 <= hidden_width <= 4096:
        raise ConfigError(f"--depth must be in [1, 8] and --hidden-width in [1, 4096], got {depth} and {hidden_width}")
    try:
        given = {
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            "batch_size": batch_size,
            "max_epochs": max_epochs,
            "seed": seed,
        }
        config = TrainConfig(**{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        raise ConfigError(f"invalid training option: {exc}") from None
    if config.weight_decay < 0:
        raise ConfigError(f"--weight-decay must be >= 0, got {config.weight_decay}")
    # a child run of the search (MLflow's own parent tag), as the local search's trials are
    tags = {"mlflow.parentRunId": parent_run_id, "tuning.trial": run_name or ""} if parent_run_id else None
    outcome = run_train(
        train_path,
        validation_path,
        model_dir,
        config,
        settings,
        hidden_units=search_space.hidden_units(hidden_width, depth),
        run_name=run_name,
        tags=tags,
    )
    console.print(f"MLflow run {outcome.mlflow_run_id}", highlight=False)
    # Katib's StdOut collector reads these lines (mlplatform.training.katib.METRICS_FORMAT); plain print, no markup.
    if outcome.val_pr_auc is not None:
        print(f"{tuning.OBJECTIVE_METRIC}={outcome.val_pr_auc:.6f}")
    print(f"best_val_loss={outcome.best_val_loss:.6f}")
