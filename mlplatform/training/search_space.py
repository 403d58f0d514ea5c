"""The search space of the train step's hyperparameters: the one definition both searches share.

`SEARCH_SPACE` is data (a `Param` per hyperparameter: its kind, range, scale and step), so the local Optuna search
(mlplatform.training.tuning) samples from it with `Param.suggest` and the Katib Experiment
(mlplatform.training.katib) renders its `parameters` from it. This module also holds what turns a point of the space
into training: `check_params` (each parameter present, typed and in range), `apply_params` (a `TrainConfig` and the
layer widths, `hidden_units`), `default_params` (the train step's defaults as a point of the space, the first trial
of every search), and `Param.describe` / `Param.from_description`, the space as JSON-able data recorded with every
tuning run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from mlplatform.errors import ConfigError
from mlplatform.training.loop import TrainConfig
from mlplatform.training.model import ModelConfig

if TYPE_CHECKING:
    import optuna

#: The narrowest hidden layer the width halves down to.
MIN_LAYER_WIDTH = 8


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

    `space` None: the parameters were checked already (`tuning.load_best_params` checks them against the
    space they were searched in); only their names are.
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
