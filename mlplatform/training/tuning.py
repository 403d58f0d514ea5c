"""Hyperparameter search of the train step: one search space (Optuna here, Katib on a cluster), MLflow child runs."""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from mlplatform.errors import ConfigError, MlPlatformError
from mlplatform.features.compute import MODEL_FEATURES, model_input
from mlplatform.training.evaluation import binary_metrics
from mlplatform.training.loop import EpochResult, TrainConfig, train_model
from mlplatform.training.model import ModelConfig, predict_proba

if TYPE_CHECKING:
    import optuna

#: The metric every trial is scored by (validation window), maximised; also the Katib objective's name.
OBJECTIVE_METRIC = "val_pr_auc"
#: Where the parent run keeps the outcome (best parameters, value, search space), read by the next pipeline run.
BEST_ARTIFACT = "tuning/best.json"
#: Tag that marks a parent tuning run; trials carry `TRIAL_STATE_TAG` (complete, pruned, failed).
TUNING_RUN_TAG = "mlplatform.tuning"
TRIAL_STATE_TAG = "tuning.state"
#: The narrowest hidden layer the width halves down to.
MIN_LAYER_WIDTH = 8


class TuningError(MlPlatformError):
    """A tuning run cannot be used: missing, not a tuning run, or its parameters fall outside the search space."""


@dataclass(frozen=True)
class Param:
    """One hyperparameter of the search space.

    Attributes:
        name: Its name, snake_case (the trial's parameter, the MLflow parameter, the Katib parameter).
        kind: "float" (continuous), "int" (integers from `low` to `high` by `step`) or "categorical" (`choices`).
        low: Smallest value (float and int).
        high: Largest value (float and int).
        log: Sample on a log scale (float only).
        step: Distance between two int values.
        choices: The values a categorical parameter takes (ints here).
        help: What it controls.
    """

    name: str
    kind: Literal["float", "int", "categorical"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: int = 1
    choices: tuple[int, ...] = ()
    help: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("float", "int", "categorical"):
            raise ConfigError(f"parameter {self.name}: kind must be float, int or categorical, got {self.kind!r}")
        if self.kind == "categorical" and not self.choices:
            raise ConfigError(f"parameter {self.name}: a categorical parameter needs choices")
        if self.kind != "categorical" and not self.low < self.high:
            raise ConfigError(f"parameter {self.name}: low ({self.low}) must be below high ({self.high})")
        if self.log and (self.kind != "float" or self.low <= 0):
            raise ConfigError(f"parameter {self.name}: a log scale needs a float parameter with low > 0")
        if self.step < 1:
            raise ConfigError(f"parameter {self.name}: step must be at least 1, got {self.step}")

    def suggest(self, trial: optuna.Trial) -> float | int:
        """The trial's value of this parameter (Optuna's distribution for the kind)."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=self.step)
        return trial.suggest_categorical(self.name, list(self.choices))

    def check(self, value: Any) -> float | int:
        """`value` as this parameter's type.

        Raises:
            ConfigError: When it is of the wrong type or outside the space.
        """
        if self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float) or not self.low <= value <= self.high:
                raise ConfigError(f"{self.name} must be a number in [{self.low:g}, {self.high:g}], got {value!r}")
            return float(value)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            and not (isinstance(value, float) and value.is_integer())
        ):  # 64 and 64.0 (JSON) are the same width; True is not
            raise ConfigError(f"{self.name} must be an integer, got {value!r}")
        value = int(value)
        if self.kind == "categorical":
            if value not in self.choices:
                raise ConfigError(f"{self.name} must be one of {', '.join(map(str, self.choices))}, got {value}")
        elif not self.low <= value <= self.high or (value - int(self.low)) % self.step:
            raise ConfigError(
                f"{self.name} must be in [{int(self.low)}, {int(self.high)}] in steps of {self.step}, got {value}"
            )
        return value

    def describe(self) -> dict[str, Any]:
        """The parameter as JSON-able data (recorded with every tuning run)."""
        if self.kind == "categorical":
            return {"name": self.name, "kind": self.kind, "choices": list(self.choices), "help": self.help}
        bounds = {"low": self.low, "high": self.high} if self.kind == "float" else {"low": int(self.low)}
        if self.kind == "int":
            bounds |= {"high": int(self.high), "step": self.step}
        return {"name": self.name, "kind": self.kind, **bounds, "log": self.log, "help": self.help}

    @classmethod
    def from_description(cls, d: Mapping[str, Any]) -> Param:
        """The parameter `describe` wrote."""
        if d["kind"] == "categorical":
            return cls(d["name"], "categorical", choices=tuple(d["choices"]), help=d.get("help", ""))
        return cls(
            d["name"],
            d["kind"],
            d["low"],
            d["high"],
            log=d.get("log", False),
            step=d.get("step", 1),
            help=d.get("help", ""),
        )


#: The search space of the train step: the one definition behind `mlplatform tune` (Optuna) and the Katib
#: Experiment (mlplatform.training.katib). The train step's defaults (`default_params`) lie inside it.
SEARCH_SPACE: tuple[Param, ...] = (
    Param("learning_rate", "float", 3e-4, 3e-2, log=True, help="AdamW learning rate."),
    Param("weight_decay", "float", 1e-6, 1e-2, log=True, help="AdamW weight decay."),
    Param("hidden_width", "int", 16, 128, step=16, help="Width of the first hidden layer; each next one halves it."),
    Param("depth", "int", 1, 3, help="Number of hidden layers."),
    Param("batch_size", "categorical", choices=(256, 512, 1024, 2048), help="Rows per optimisation step."),
    Param("max_epochs", "int", 10, 40, step=5, help="Upper bound on epochs; early stopping ends most runs sooner."),
)


def hidden_units(width: int, depth: int) -> list[int]:
    """Layer widths for a first width and a depth: [64, 32] for (64, 2), halving down to MIN_LAYER_WIDTH."""
    return [max(MIN_LAYER_WIDTH, width >> i) for i in range(depth)]


def default_params(config: TrainConfig | None = None, layers: Sequence[int] | None = None) -> dict[str, float | int]:
    """The train step's defaults as a point of the search space (the first trial of every search)."""
    config = config or TrainConfig()
    layers = list(layers or ModelConfig(feature_names=[]).hidden_units)
    return {
        "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay,
        "hidden_width": layers[0],
        "depth": len(layers),
        "batch_size": config.batch_size,
        "max_epochs": config.max_epochs,
    }


def _check_names(params: Mapping[str, Any], space: Sequence[Param]) -> None:
    names = {p.name for p in space}
    if unknown := sorted(set(params) - names):
        raise ConfigError(f"unknown tuning parameter(s) {', '.join(unknown)}; expected {', '.join(sorted(names))}")
    if missing := sorted(names - set(params)):
        raise ConfigError(f"missing tuning parameter(s) {', '.join(missing)}")


def check_params(params: Mapping[str, Any], space: Sequence[Param] = SEARCH_SPACE) -> dict[str, float | int]:
    """Parameters validated against the search space: each one present, typed and inside its range.

    Raises:
        ConfigError: Naming a missing, unknown or out-of-range parameter.
    """
    _check_names(params, space)
    return {p.name: p.check(params[p.name]) for p in space}


def apply_params(
    params: Mapping[str, Any], base: TrainConfig, space: Sequence[Param] | None = SEARCH_SPACE
) -> tuple[TrainConfig, list[int]]:
    """The training configuration and layer widths of a point of the search space (the rest from `base`).

    `space` None: the parameters were checked already (`load_best_params` checks them against the space
    they were searched in); only their names are.
    """
    if space is None:
        _check_names(params, SEARCH_SPACE)
        p = dict(params)
    else:
        p = check_params(params, space)
    config = replace(
        base,
        learning_rate=float(p["learning_rate"]),
        weight_decay=float(p["weight_decay"]),
        batch_size=int(p["batch_size"]),
        max_epochs=int(p["max_epochs"]),
    )
    return config, hidden_units(int(p["hidden_width"]), int(p["depth"]))


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
