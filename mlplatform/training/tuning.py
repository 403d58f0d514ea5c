"""Hyperparameter search of the train step and its MLflow records.

`tune` runs the search here (Optuna: seeded TPE, the defaults as the first trial, median pruning per epoch), every
trial an MLflow child run of one parent; `start_cluster_search` and `record_cluster_search` keep the same records
for a search Katib runs on a cluster (mlplatform.training.katib); `load_best_params` reads a search's best for the
next pipeline run. The search space itself, and turning a point of it into training, is
mlplatform.training.search_space.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlplatform.errors import ConfigError, MlPlatformError
from mlplatform.features.compute import MODEL_FEATURES, model_input
from mlplatform.training.evaluation import binary_metrics
from mlplatform.training.loop import EpochResult, TrainConfig, train_model
from mlplatform.training.model import ModelConfig, predict_proba
from mlplatform.training.search_space import SEARCH_SPACE, Param, apply_params, check_params, default_params

if TYPE_CHECKING:
    import optuna

#: The metric every trial is scored by (validation window), maximised; also the Katib objective's name.
OBJECTIVE_METRIC = "val_pr_auc"
#: Where the parent run keeps the outcome (best parameters, value, search space), read by the next pipeline run.
BEST_ARTIFACT = "tuning/best.json"
#: Tag that marks a parent tuning run; trials carry `TRIAL_STATE_TAG` (complete, pruned, failed).
TUNING_RUN_TAG = "mlplatform.tuning"
TRIAL_STATE_TAG = "tuning.state"


class TuningError(MlPlatformError):
    """A tuning run cannot be used: missing, not a tuning run, or its parameters fall outside the search space."""


@dataclass(frozen=True)
class TuneOptions:
    """How a search runs.

    Attributes:
        trials: Trials to run (the first one is the train step's defaults).
        timeout_seconds: Stop starting trials after this long; None: run them all. With a timeout the number
            of trials depends on the machine's speed, so only a search without one is reproducible.
        seed: Seed of the sampler (TPE) and of every trial's training.
        startup_trials: Trials sampled at random before TPE models the results.
        pruner_startup_trials: Trials that run to the end before the median pruner may stop any.
        pruner_warmup_epochs: Epochs of a trial before it may be pruned.
        patience: Early-stopping patience of every trial (epochs without validation-loss improvement).
        device: Where trials train ("auto", "cpu", "cuda").
        run_name: Name of the parent MLflow run.
    """

    trials: int = 12
    timeout_seconds: float | None = None
    seed: int = 42
    startup_trials: int = 5
    pruner_startup_trials: int = 3
    pruner_warmup_epochs: int = 3
    patience: int = 4
    device: str = "auto"
    run_name: str = "tuning"

    def __post_init__(self) -> None:
        checks = [
            (self.trials >= 1, f"trials must be at least 1, got {self.trials}"),
            (
                self.timeout_seconds is None or self.timeout_seconds > 0,
                f"timeout_seconds must be positive, got {self.timeout_seconds}",
            ),
            (0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed}"),
            (self.startup_trials >= 1, f"startup_trials must be at least 1, got {self.startup_trials}"),
            (self.pruner_startup_trials >= 0, f"pruner_startup_trials must be >= 0, got {self.pruner_startup_trials}"),
            (self.pruner_warmup_epochs >= 0, f"pruner_warmup_epochs must be >= 0, got {self.pruner_warmup_epochs}"),
            (self.patience >= 1, f"patience must be at least 1, got {self.patience}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass(frozen=True)
class TrialRecord:
    """One trial: its parameters, state, score and MLflow run."""

    number: int
    params: dict[str, float | int]
    state: str
    value: float | None
    epochs: int
    mlflow_run_id: str


@dataclass(frozen=True)
class TuneResult:
    """The outcome of a search."""

    parent_run_id: str
    best_params: dict[str, float | int]
    best_value: float
    best_trial: int
    default_value: float | None
    trials: list[TrialRecord] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def pruned(self) -> int:
        return sum(t.state == "pruned" for t in self.trials)

    @property
    def completed(self) -> int:
        return sum(t.state == "complete" for t in self.trials)


def _arrays(frame: pd.DataFrame, split: str) -> tuple[np.ndarray, np.ndarray]:
    if "is_fraud" not in frame.columns:
        raise ConfigError(f"the {split} split has no is_fraud label column")
    missing = [c for c in MODEL_FEATURES if c not in frame.columns]
    if missing:
        raise ConfigError(f"the {split} split lacks the model feature(s) {', '.join(missing)}")
    if frame.empty:
        raise ConfigError(f"the {split} split is empty")
    return model_input(frame), frame["is_fraud"].to_numpy(np.float32)


def tune(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    experiment_id: str,
    options: TuneOptions,
    base: TrainConfig | None = None,
    tags: Mapping[str, str] | None = None,
    space: Sequence[Param] = SEARCH_SPACE,
) -> TuneResult:
    """Search the train step's hyperparameters on the validation window; every trial an MLflow child run.

    The first trial is the train step's defaults (`default_params`), so the best is never worse than the
    defaults on validation. Then TPE (seeded) proposes points; after every epoch a trial reports its
    negated validation loss (the same weighted loss for every trial) and the median pruner stops one that
    is behind the median of earlier trials at that epoch. A completed trial scores the PR-AUC of its best
    epoch's model on the validation window. Trials run one after another (n_jobs=1), so a seed gives the
    same trials, the same scores and the same best configuration (without a timeout).

    The parent run (in `experiment_id`, MLflow already configured) gets the best parameters as
    parameters, `best_val_pr_auc` and `default_val_pr_auc` as metrics, and `tuning/best.json` (best
    parameters, value, trial, seed, search space) and `tuning/search_space.json` as artifacts.

    `base` gives what is not searched (pos_weight, schedule) and the defaults of the first trial; `space`
    narrows the search (it must hold the same parameters as SEARCH_SPACE, and `base`'s defaults).

    Raises:
        ConfigError: On splits without the label or features, or with no fraud in validation.
    """
    import mlflow
    import optuna

    x_tr, y_tr = _arrays(train, "training")
    x_va, y_va = _arrays(validation, "validation")
    if not 0 < y_va.sum() < len(y_va):
        raise ConfigError("the validation split needs both fraud and legitimate rows to score PR-AUC")
    base = replace(base or TrainConfig(), seed=options.seed, patience=options.patience, device=options.device)
    if sorted(p.name for p in space) != sorted(p.name for p in SEARCH_SPACE):
        raise ConfigError(f"a search space must hold {', '.join(p.name for p in SEARCH_SPACE)}")
    defaults = check_params(default_params(base), space)
    described = [p.describe() for p in space]
    records: list[TrialRecord] = []

    def objective(trial: optuna.Trial) -> float:
        params = {p.name: p.suggest(trial) for p in space}
        config, layers = apply_params(params, base, space)
        model_config = ModelConfig(feature_names=list(MODEL_FEATURES), hidden_units=layers)
        epochs = 0

        def report(r: EpochResult) -> None:
            nonlocal epochs
            epochs = r.epoch
            mlflow.log_metrics({"train_loss": r.train_loss, "val_loss": r.val_loss}, step=r.epoch)
            trial.report(-r.val_loss, r.epoch)  # nan when training diverged: the median pruner stops it
            if trial.should_prune():
                raise optuna.TrialPruned(f"trial {trial.number} pruned after epoch {r.epoch}")

        run = mlflow.start_run(
            experiment_id=experiment_id,  # else MLflow files a nested run under the default experiment
            run_name=f"trial-{trial.number:03d}",
            nested=True,
            tags={"tuning.trial": str(trial.number)},
        )
        state, value = "failed", None
        try:
            mlflow.log_params({**params, "hidden_units": layers, "seed": config.seed, "patience": config.patience})
            try:
                result = train_model(model_config, x_tr, y_tr, x_va, y_va, config, on_epoch=report)
            except optuna.TrialPruned:
                state = "pruned"
                raise
            scores = predict_proba(result.model, x_va)
            if not np.isfinite(scores).all():
                return float("nan")  # Optuna records a failed trial and goes on
            value = binary_metrics(y_va, scores, 0.5)["pr_auc"]
            state = "complete"
            mlflow.log_metrics({OBJECTIVE_METRIC: value, "best_epoch": result.best_epoch})
            return value
        finally:
            mlflow.set_tag(TRIAL_STATE_TAG, state)
            mlflow.end_run("FINISHED" if state == "complete" else "KILLED" if state == "pruned" else "FAILED")
            records.append(TrialRecord(trial.number, params, state, value, epochs, run.info.run_id))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=options.seed, n_startup_trials=options.startup_trials),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=options.pruner_startup_trials, n_warmup_steps=options.pruner_warmup_epochs
        ),
    )
    study.enqueue_trial(defaults)
    started = time.monotonic()
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=options.run_name, tags={TUNING_RUN_TAG: "search", **(tags or {})}
    ) as parent:
        mlflow.log_params({"tuning.trials": options.trials, "tuning.seed": options.seed, "tuning.sampler": "tpe"})
        study.optimize(objective, n_trials=options.trials, timeout=options.timeout_seconds, n_jobs=1)
        wall = time.monotonic() - started
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            raise TuningError(f"no trial of {len(study.trials)} completed (all pruned or diverged)")
        best = study.best_trial
        assert best.value is not None  # a completed trial has its value
        best_params = check_params(best.params, space)
        default_value = records[0].value if records and records[0].state == "complete" else None
        outcome = {
            "params": best_params,
            "value": best.value,
            "metric": OBJECTIVE_METRIC,
            "trial": best.number,
            "seed": options.seed,
            "trials": len(study.trials),
            "default_params": defaults,
            "default_value": default_value,
            "search_space": described,
        }
        log_outcome(outcome)
        mlflow.log_metrics(
            {
                **({f"default_{OBJECTIVE_METRIC}": default_value} if default_value is not None else {}),
                "trials_complete": len(done),
                "trials_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
                "wall_seconds": wall,
            }
        )
        return TuneResult(
            parent_run_id=parent.info.run_id,
            best_params=best_params,
            best_value=float(best.value),
            best_trial=best.number,
            default_value=default_value,
            trials=records,
            wall_seconds=wall,
        )


def log_outcome(outcome: Mapping[str, Any]) -> None:
    """Record a search's outcome in the active parent run: the best parameters as parameters, the best value as
    a metric, `tuning/best.json` (the outcome) and `tuning/search_space.json`, and the parent tag that lets
    `load_best_params` use the run."""
    import mlflow

    mlflow.log_params(dict(outcome["params"]))
    mlflow.log_metric(f"best_{OBJECTIVE_METRIC}", float(outcome["value"]))
    mlflow.set_tag(TUNING_RUN_TAG, "parent")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tuning"
        folder.mkdir()
        (folder / Path(BEST_ARTIFACT).name).write_text(json.dumps(outcome, indent=2, sort_keys=True))
        (folder / "search_space.json").write_text(json.dumps(outcome["search_space"], indent=2))
        mlflow.log_artifacts(str(folder), artifact_path="tuning")


def start_cluster_search(
    experiment_id: str, run_name: str, seed: int, experiment: str, space: Sequence[Param] = SEARCH_SPACE
) -> str:
    """The parent MLflow run of a search that Katib runs (its trials' runs name it as their parent); MLflow
    already configured. It becomes usable by the pipeline once `record_cluster_search` has recorded the best."""
    import mlflow

    tags = {TUNING_RUN_TAG: "cluster", "tuning.katib_experiment": experiment}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        mlflow.log_params({"tuning.seed": seed, "tuning.sampler": "katib-tpe"})
        mlflow.log_text(json.dumps([p.describe() for p in space], indent=2), "tuning/search_space.json")
        return run.info.run_id


def record_cluster_search(
    parent_run_id: str,
    params: Mapping[str, Any],
    value: float,
    trial: str,
    seed: int,
    trials: int,
    space: Sequence[Param] = SEARCH_SPACE,
) -> None:
    """Record the best trial of a finished Katib search in its parent run, as `tune` records a local one."""
    import mlflow

    outcome = {
        "params": check_params(params, space),
        "value": value,
        "metric": OBJECTIVE_METRIC,
        "trial": trial,
        "seed": seed,
        "trials": trials,
        "search_space": [p.describe() for p in space],
    }
    with mlflow.start_run(run_id=parent_run_id):
        log_outcome(outcome)


def load_best_params(run_id: str) -> dict[str, float | int]:
    """The best parameters a tuning run recorded (`tuning/best.json` of its parent run), checked against the
    search space recorded with them, which must hold the parameters of this code's SEARCH_SPACE (MLflow
    already configured).

    Raises:
        TuningError: When the run does not exist, is not a tuning run, or its parameters no longer fit the space.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.get_run(run_id)
    except MlflowException as exc:
        raise TuningError(f"tuning run {run_id!r} not found in {mlflow.get_tracking_uri()}: {exc.message}") from None
    if run.data.tags.get(TUNING_RUN_TAG) != "parent":
        raise TuningError(f"run {run_id} is not a tuning run (no {TUNING_RUN_TAG}=parent tag); pass a tune run id")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=BEST_ARTIFACT, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            raise TuningError(f"tuning run {run_id} has no {BEST_ARTIFACT}: {exc}") from None
        outcome = json.loads(Path(path).read_text())
    try:
        space = [Param.from_description(d) for d in outcome["search_space"]]
        if sorted(p.name for p in space) != sorted(p.name for p in SEARCH_SPACE):
            raise ConfigError(f"it searched {', '.join(p.name for p in space)}")
        return check_params(outcome["params"], space)
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise TuningError(f"tuning run {run_id} does not fit this code's search space: {exc}") from None


def trial_summary(result: TuneResult) -> list[dict[str, Any]]:
    """The trials as rows (benchmarks, the CLI)."""
    return [
        {**asdict(t), "value": None if t.value is None or math.isnan(t.value) else round(t.value, 6)}
        for t in result.trials
    ]
