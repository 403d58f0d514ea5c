"""Model staleness: PR-AUC lost per week of model age under gradual drift, and the retraining cadence it implies."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.data.generator import GeneratorConfig, generate_transactions
from mlplatform.errors import ConfigError
from mlplatform.features.compute import (
    CUSTOMER_TTL_S,
    MODEL_FEATURES,
    customer_features,
    merchant_features,
    model_input,
    on_demand_features,
    request_fields,
)
from mlplatform.training.evaluation import binary_metrics
from mlplatform.training.loop import TrainConfig, train_model
from mlplatform.training.model import ModelConfig, predict_proba

DAYS_PER_WEEK = 7
#: A loss counts as measured only when the fitted slope is this many standard errors below zero; a flatter
#: curve (no drift, or too little data to tell) derives no cadence at all rather than a random one.
SIGNIFICANCE_STDERRS = 2.0
#: Columns of the raw events kept beside the features (keys, time, label).
EVENT_COLUMNS = ["transaction_id", "customer_id", "merchant_id", "event_timestamp", "is_fraud"]


@dataclass(frozen=True)
class StalenessConfig:
    """What the staleness measurement generates, trains and tolerates.

    The timeline: a training window at drift 0 (the distribution the model learns), then `weeks` evaluation
    weeks. Drift grows by `drift_per_week` per week of model age from the end of training, so the traffic of
    week k (model age 7k..7k+7 days) is generated at the drift of its middle, `drift_per_week * (k + 0.5)`.

    Attributes:
        transactions_per_day: Generated traffic per day (the default pipeline run has about 1,100).
        warmup_days: Days generated before each window only to fill the 30-day aggregates; never scored.
        train_days: Days of the one training window, after the warm-up.
        validation_days: Days after the training window used for early stopping.
        weeks: Evaluation weeks after training (model ages 0-7 days, 7-14 days, ...).
        drift_per_week: Drift, on the generator's 0..1 scale, added per week of model age: the scenario
            (0.02: the generator's full shift over 50 weeks). 0 is the control: no drift at all.
        fraud_rate: Share of fraud generated.
        seed: Seed of the first replicate's training data and training; each replicate derives one generator
            seed for its training window and another for all its evaluation weeks.
        replicates: Independent repetitions (other data, other initialisation); the fit gives each its own
            level and all of them one slope.
        tolerated_pr_auc_loss: PR-AUC a served model may lose to staleness before it must have been replaced.
        retraining_margin_days: Time a retraining run, the registry gate and the canary rollout take before a
            new version serves; the schedule starts runs this much before the tolerance is reached.
        hidden_units: Width of the model's hidden layers (the pipeline's default).
        train: Hyperparameters of the training runs.
        start: First day of the timeline (UTC midnight).
    """

    transactions_per_day: int = 3_000
    warmup_days: int = 30
    train_days: int = 28
    validation_days: int = 7
    weeks: int = 10
    drift_per_week: float = 0.02
    fraud_rate: float = 0.02
    seed: int = 42
    replicates: int = 5
    tolerated_pr_auc_loss: float = 0.02
    retraining_margin_days: float = 1.0
    hidden_units: tuple[int, ...] = (64, 32)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(device="cpu"))
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)

    def __post_init__(self) -> None:
        problems = []
        if self.transactions_per_day < 100:
            problems.append(f"transactions_per_day must be at least 100, got {self.transactions_per_day}")
        if self.warmup_days < 0:
            problems.append(f"warmup_days must be at least 0, got {self.warmup_days}")
        if self.train_days < DAYS_PER_WEEK or self.validation_days < 1:
            problems.append(
                f"train_days must be at least {DAYS_PER_WEEK} and validation_days at least 1, "
                f"got {self.train_days} and {self.validation_days}"
            )
        if self.weeks < 3:
            problems.append(f"weeks must be at least 3 (a slope needs points to fit), got {self.weeks}")
        if self.drift_per_week < 0 or self.drift_per_week * (self.weeks - 0.5) > 1.0:
            problems.append(
                f"drift_per_week must be >= 0 and reach at most 1 (the generator's scale) by the last week: "
                f"{self.drift_per_week} * ({self.weeks} - 0.5) = {self.drift_per_week * (self.weeks - 0.5):.3g}"
            )
        if self.replicates < 1:
            problems.append(f"replicates must be at least 1, got {self.replicates}")
        if not 0 < self.tolerated_pr_auc_loss < 1:
            problems.append(f"tolerated_pr_auc_loss must be in (0, 1), got {self.tolerated_pr_auc_loss}")
        if self.retraining_margin_days < 0:
            problems.append(f"retraining_margin_days must be >= 0, got {self.retraining_margin_days}")
        if not 0.001 <= self.fraud_rate <= 0.2:
            problems.append(f"fraud_rate must be within [0.001, 0.2], got {self.fraud_rate}")
        if self.start.tzinfo is None:
            problems.append("start must be timezone-aware (UTC)")
        if problems:
            raise ConfigError("invalid staleness configuration: " + "; ".join(problems))

    def week_drift(self, week: int) -> float:
        """The drift of evaluation week `week` (0-based): that of its middle."""
        return self.drift_per_week * (week + 0.5)

    @property
    def training_end(self) -> datetime:
        """Where training data ends and model age starts (the model is trained and deployed at this instant)."""
        return self.start + timedelta(days=self.warmup_days + self.train_days + self.validation_days)


@dataclass(frozen=True)
class WeekPoint:
    """A model's PR-AUC on one week of traffic.

    Attributes:
        replicate: Which repetition (its own training data and model).
        week: Evaluation week, 0 = the first week after training.
        age_days: Model age at the middle of the week.
        drift: Drift the week's traffic was generated with.
        pr_auc: PR-AUC (average precision) of the model's scores on the week.
        positives: Fraudulent transactions in the week.
        count: Transactions in the week.
    """

    replicate: int
    week: int
    age_days: float
    drift: float
    pr_auc: float
    positives: int
    count: int


@dataclass(frozen=True)
class DecayFit:
    """Least-squares line PR-AUC = intercept + slope * age.

    Attributes:
        intercept_pr_auc: Fitted PR-AUC at age 0.
        slope_per_day: Fitted change of PR-AUC per day of age (negative: the model loses quality).
        slope_stderr_per_day: Standard error of the slope.
        points: Points the line was fitted to.
    """

    intercept_pr_auc: float
    slope_per_day: float
    slope_stderr_per_day: float
    points: int

    @property
    def loss_per_week(self) -> float:
        """PR-AUC lost per week of model age (positive when the model decays)."""
        return -self.slope_per_day * DAYS_PER_WEEK

    @property
    def significant(self) -> bool:
        """Whether the decay is measured: the slope lies `SIGNIFICANCE_STDERRS` standard errors below zero."""
        return self.slope_per_day < -SIGNIFICANCE_STDERRS * self.slope_stderr_per_day


@dataclass(frozen=True)
class Cadence:
    """What the measured decay implies for operations.

    Attributes:
        tolerated_pr_auc_loss: The loss a served model may accumulate.
        max_age_days: Age at which the fitted loss reaches the tolerance; None when no decay was measured.
        alert_threshold_days: Whole days a served model may be old before the staleness alert: the max age
            rounded down (at least 1), so the alert fires no later than the tolerance is exceeded. None without
            decay.
        retraining_cadence_days: Days between scheduled retraining runs: the max age less the retraining
            margin, rounded down, at least 1. None without decay.
        schedule_keeps_tolerance: Whether a daily or slower schedule keeps the loss within the tolerance (the
            max age is at least the margin plus one day); False means retrain continuously or tolerate more.
    """

    tolerated_pr_auc_loss: float
    max_age_days: float | None
    alert_threshold_days: int | None
    retraining_cadence_days: int | None
    schedule_keeps_tolerance: bool = True


@dataclass(frozen=True)
class StalenessResult:
    """The measurement: every week's PR-AUC, the fitted decay and the cadence derived from it."""

    config: StalenessConfig
    points: list[WeekPoint]
    fit: DecayFit
    cadence: Cadence

    def summary(self) -> dict[str, Any]:
        """The result as JSON-ready data: configuration, per-week means, every point, the fit and the cadence."""
        return {
            "config": config_dict(self.config),
            "model_features": list(MODEL_FEATURES),
            "weeks": self.mean_by_week(),
            "points": [asdict(p) for p in self.points],
            "fit": {
                "intercept_pr_auc": self.fit.intercept_pr_auc,
                "slope_per_day": self.fit.slope_per_day,
                "slope_stderr_per_day": self.fit.slope_stderr_per_day,
                "pr_auc_lost_per_week": self.fit.loss_per_week,
                "pr_auc_lost_per_week_stderr": self.fit.slope_stderr_per_day * DAYS_PER_WEEK,
                "pr_auc_lost_per_unit_drift": (
                    self.fit.loss_per_week / self.config.drift_per_week if self.config.drift_per_week else None
                ),
                "significant": self.fit.significant,
                "points": self.fit.points,
            },
            "cadence": asdict(self.cadence),
            "per_replicate": self.per_replicate(),
        }

    def per_replicate(self) -> list[dict[str, Any]]:
        """Each replicate's own line: how much the loss per week varies from one trained model to another."""
        out = []
        for replicate in sorted({p.replicate for p in self.points}):
            ps = [p for p in self.points if p.replicate == replicate]
            fit = fit_decay([p.age_days for p in ps], [p.pr_auc for p in ps])
            cadence = derive_cadence(fit, self.config.tolerated_pr_auc_loss, self.config.retraining_margin_days)
            out.append(
                {
                    "replicate": replicate,
                    "intercept_pr_auc": fit.intercept_pr_auc,
                    "pr_auc_lost_per_week": fit.loss_per_week,
                    "max_age_days": cadence.max_age_days,
                }
            )
        return out

    def mean_by_week(self) -> list[dict[str, float]]:
        """Per evaluation week: age, drift and the PR-AUC averaged over replicates (with its spread)."""
        out = []
        for week in sorted({p.week for p in self.points}):
            ps = [p for p in self.points if p.week == week]
            values = np.array([p.pr_auc for p in ps])
            out.append(
                {
                    "week": week,
                    "age_days": ps[0].age_days,
                    "drift": ps[0].drift,
                    "pr_auc_mean": float(values.mean()),
                    "pr_auc_min": float(values.min()),
                    "pr_auc_max": float(values.max()),
                    "positives_mean": float(np.mean([p.positives for p in ps])),
                }
            )
        return out


def config_dict(config: StalenessConfig) -> dict[str, Any]:
    """The configuration as JSON data, as the benchmark records it."""
    data = asdict(config)
    data["start"] = config.start.isoformat()
    return json.loads(json.dumps(data))


def point_in_time_features(transactions: pd.DataFrame) -> pd.DataFrame:
    """The model features of each transaction as of its time, offline, without Feast.

    The same feature code as the pipeline (`customer_features`, `merchant_features`, `on_demand_features`),
    joined as Feast's offline store joins them for a training set: the latest customer row at or before the
    event and no older than the customer view's TTL (`CUSTOMER_TTL_S`), the latest daily merchant snapshot.

    Args:
        transactions: Raw transactions (the generator's columns).

    Returns:
        `EVENT_COLUMNS`, the request fields and every feature, sorted by event time.
    """
    events = pd.concat([transactions[EVENT_COLUMNS], request_fields(transactions)], axis=1)
    events = events.sort_values(["event_timestamp", "transaction_id"], kind="stable")
    cust = customer_features(transactions).sort_values("event_timestamp", kind="stable")
    merch = merchant_features(transactions).sort_values("event_timestamp", kind="stable")
    frame = pd.merge_asof(
        events,
        cust,
        on="event_timestamp",
        by="customer_id",
        direction="backward",
        tolerance=pd.Timedelta(seconds=CUSTOMER_TTL_S),
    )
    frame = pd.merge_asof(frame, merch, on="event_timestamp", by="merchant_id", direction="backward")
    frame = frame.reset_index(drop=True)
    return pd.concat([frame, on_demand_features(frame)], axis=1)


def _between(frame: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
    ts = frame["event_timestamp"]
    return frame[(ts >= pd.Timestamp(start)) & (ts < pd.Timestamp(end))]


def _window(config: StalenessConfig, seed: int, drift: float, start: datetime, days: int) -> pd.DataFrame:
    """Features of `days` days of traffic from `start`, generated with the warm-up before it."""
    warm_start = start - timedelta(days=config.warmup_days)
    n_days = config.warmup_days + days
    generated = GeneratorConfig(
        n_transactions=max(1_000, config.transactions_per_day * n_days),
        n_days=n_days,
        seed=seed,
        fraud_rate=config.fraud_rate,
        drift=drift,
        start=warm_start,
    )
    frame = point_in_time_features(generate_transactions(generated))
    return _between(frame, start, start + timedelta(days=days))


def _world_seed(seed: int, replicate: int, evaluation: bool) -> int:
    """The generator seed of a replicate's training population or of its evaluation population."""
    return seed + 1_000_003 * replicate + (7_919 if evaluation else 0)


def measure_replicate(config: StalenessConfig, replicate: int) -> list[WeekPoint]:
    """Train one model on the training window and score it on every evaluation week.

    The generator draws customers and merchants from its seed and holds one drift per call, so each window
    is generated with its own warm-up: the training window from one population at drift 0, every evaluation
    week from one other population (one seed for all weeks) at the week's drift. The weeks therefore differ
    only by drift (common random numbers): the curve is the drift's effect, not the sampling noise between
    populations. A week's 30-day history is at the week's drift, a slightly faster shift than a continuous
    one, whose history would lag by a few weeks.
    """
    train_start = config.start + timedelta(days=config.warmup_days)
    train_seed = _world_seed(config.seed, replicate, evaluation=False)
    labelled = _window(config, train_seed, 0.0, train_start, config.train_days + config.validation_days)
    val_start = train_start + timedelta(days=config.train_days)
    train = _between(labelled, train_start, val_start)
    val = _between(labelled, val_start, config.training_end)
    model_config = ModelConfig(feature_names=list(MODEL_FEATURES), hidden_units=list(config.hidden_units))
    train_config = replace(config.train, seed=config.train.seed + replicate)
    result = train_model(
        model_config,
        model_input(train),
        train["is_fraud"].to_numpy(np.float32),
        model_input(val),
        val["is_fraud"].to_numpy(np.float32),
        train_config,
    )
    eval_seed = _world_seed(config.seed, replicate, evaluation=True)
    points = []
    for week in range(config.weeks):
        drift = config.week_drift(week)
        week_start = config.training_end + timedelta(days=DAYS_PER_WEEK * week)
        frame = _window(config, eval_seed, drift, week_start, DAYS_PER_WEEK)
        y = frame["is_fraud"].to_numpy(np.int64)
        scores = predict_proba(result.model, model_input(frame))
        points.append(
            WeekPoint(
                replicate=replicate,
                week=week,
                age_days=DAYS_PER_WEEK * (week + 0.5),
                drift=round(drift, 6),
                pr_auc=binary_metrics(y, scores, threshold=0.5)["pr_auc"],
                positives=int(y.sum()),
                count=len(y),
            )
        )
    return points


def fit_decay(
    ages_days: Sequence[float], pr_aucs: Sequence[float], replicates: Sequence[int] | None = None
) -> DecayFit:
    """Least-squares line through (age, PR-AUC), with the slope's standard error.

    With `replicates`, each replicate keeps its own level (a model trained on other data starts higher or
    lower) and the slope is the common one within replicates, so the level differences between models do not
    count as noise around the line; the intercept is the mean level.

    Raises:
        ConfigError: With too few points, a NaN PR-AUC or a single age per replicate.
    """
    x, y = np.asarray(ages_days, np.float64), np.asarray(pr_aucs, np.float64)
    group = np.zeros(len(x), np.int64) if replicates is None else np.asarray(replicates, np.int64)
    if not len(x) == len(y) == len(group):
        raise ConfigError(f"ages ({len(x)}), PR-AUCs ({len(y)}) and replicates ({len(group)}) differ in count")
    labels, group = np.unique(group, return_inverse=True)
    if len(x) < len(labels) + 2:
        raise ConfigError(
            f"a decay fit needs at least three (age, PR-AUC) points and one more per extra replicate, got {len(x)} "
            f"points of {len(labels)} replicate(s)"
        )
    if np.isnan(y).any():
        raise ConfigError("a PR-AUC is NaN: some week has no fraud or no legitimate transaction; generate more")
    counts = np.bincount(group)
    x_mean, y_mean = np.bincount(group, x) / counts, np.bincount(group, y) / counts
    dx, dy = x - x_mean[group], y - y_mean[group]
    sxx = float((dx**2).sum())
    if sxx == 0:
        raise ConfigError("every point of a replicate has the same model age: no slope can be fitted")
    slope = float((dx * dy).sum() / sxx)
    residual = dy - slope * dx
    stderr = math.sqrt(float((residual**2).sum()) / (len(x) - len(labels) - 1) / sxx)
    intercept = float(np.mean(y_mean - slope * x_mean))
    return DecayFit(intercept, slope, stderr, len(x))


def derive_cadence(fit: DecayFit, tolerated_pr_auc_loss: float, retraining_margin_days: float) -> Cadence:
    """The age at which the fitted loss reaches the tolerance, the alert threshold and the schedule from it."""
    if not fit.significant:
        return Cadence(tolerated_pr_auc_loss, None, None, None)
    # Rounded to the microday first: 0.02 / 0.002 is 9.999999999999998 in floating point, not less than 10 days.
    max_age = round(tolerated_pr_auc_loss / -fit.slope_per_day, 6)
    return Cadence(
        tolerated_pr_auc_loss=tolerated_pr_auc_loss,
        max_age_days=max_age,
        alert_threshold_days=max(1, math.floor(max_age)),
        retraining_cadence_days=max(1, math.floor(max_age - retraining_margin_days)),
        schedule_keeps_tolerance=max_age - retraining_margin_days >= 1,
    )


def measure_staleness(
    config: StalenessConfig, on_replicate: Callable[[int, list[WeekPoint]], None] | None = None
) -> StalenessResult:
    """Train `replicates` models, score each on every week after its training, fit the decay, derive the cadence.

    Args:
        config: What to generate, train and tolerate.
        on_replicate: Called with each replicate's points as it finishes (progress).

    Returns:
        Every point, the pooled least-squares fit and the cadence.
    """
    points: list[WeekPoint] = []
    for replicate in range(config.replicates):
        measured = measure_replicate(config, replicate)
        points += measured
        if on_replicate is not None:
            on_replicate(replicate, measured)
    fit = fit_decay([p.age_days for p in points], [p.pr_auc for p in points], [p.replicate for p in points])
    return StalenessResult(
        config, points, fit, derive_cadence(fit, config.tolerated_pr_auc_loss, config.retraining_margin_days)
    )
