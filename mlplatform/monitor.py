"""Drift, training-serving skew and delayed-label quality of served model versions, as Prometheus gauges.

Every `interval_seconds` the monitor reads the prediction log (`serving.prediction_log`) and the label
feed (`mlplatform.labels`), groups the predictions of the last `window_seconds` by model version, and
compares each version's live window with the reference statistics saved in that version's artifact
(`reference_stats.json`, written by the train step):

- PSI per feature and of the score, over the reference's quantile bins (`stats.psi`);
- KS per continuous feature and of the score, at the reference's bin edges (`stats.ks_statistic`);
  a feature is continuous when its reference has at least `CONTINUOUS_MIN_BINS` distinct quantile bins;
- the missing rate: share of live values that are absent, null, NaN or infinite;
- the training-serving skew: the standardized mean difference (live mean - training mean) / pooled
  standard deviation (`stats.standardized_mean_difference`), signed.

Quality uses the predictions of the last `quality_window_seconds` whose label is known (joined by
record id): precision and recall at the version's operating threshold and PR-AUC. The model age is
the time since the version was registered (MLflow creation time).

Run it with `python -m mlplatform.monitor` (or `mlplatform monitor serve`): `/metrics` and `/healthz`
on `MLPLATFORM_MONITOR_PORT`.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlplatform.errors import MlPlatformError
from mlplatform.labels import Label, join_labels, read_labels, record_key
from mlplatform.settings import PlatformSettings
from mlplatform.stats import bin_proportions, ks_statistic, psi, standardized_mean_difference

log = logging.getLogger(__name__)

#: PSI at or above this is a moderate shift (the report marks it "watch").
PSI_WARN = 0.1
#: PSI at or above this is a significant shift (the report marks it "drift"; the alert threshold).
PSI_ALERT = 0.25
#: KS distance at or above this is a significant shift of a continuous feature or the score.
KS_ALERT = 0.2
#: |standardized mean difference| at or above this is a training-serving skew worth a look.
SKEW_ALERT = 0.5
#: A feature whose reference has at least this many distinct quantile bins counts as continuous (gets KS).
CONTINUOUS_MIN_BINS = 5
#: Outcomes of `mlplatform_monitor_runs_total`.
OUTCOMES = ("ok", "error", "skipped")


class MonitorError(MlPlatformError):
    """The monitor cannot evaluate what it was asked to (missing log, unknown version, empty window)."""


class UnknownModelVersion(MonitorError):
    """A model version named in the prediction log or on the command line is not in the registry."""


class ReferenceUnavailable(MonitorError):
    """A model version's artifact has no reference statistics to compare live traffic with."""


class MonitorSettings(BaseSettings):
    """What the monitor watches, how often, and where it serves its metrics.

    Each field is read from the environment variable `MLPLATFORM_MONITOR_<FIELD NAME>`. The MLflow
    tracking URI and the work dir come from `PlatformSettings` (`MLPLATFORM_MLFLOW_TRACKING_URI`,
    `MLPLATFORM_WORK_DIR`).
    """

    model_config = SettingsConfigDict(env_prefix="MLPLATFORM_MONITOR_", extra="forbid")

    prediction_log_dir: Path | None = Field(
        default=None,
        description="Folder of the prediction log (predictions-*.jsonl); unset means <work_dir>/predictions, "
        "where local serving writes it.",
    )
    labels_dir: Path | None = Field(
        default=None, description="Folder of the label feed (labels-*.jsonl); unset means <work_dir>/labels."
    )
    model_dir: Path | None = Field(
        default=None,
        description="A model artifact folder whose reference statistics every version is compared with; unset "
        "means each version's own artifact from the MLflow registry (cached under <work_dir>/serving).",
    )
    model_name: str | None = Field(
        default=None,
        description="Registered model whose predictions are monitored; unset means MLPLATFORM_REGISTERED_MODEL_NAME.",
    )
    window_seconds: float = Field(
        default=3600.0, gt=0, description="Length of the live window drift is computed over (by served_at)."
    )
    quality_window_seconds: float = Field(
        default=7 * 86_400.0,
        gt=0,
        description="Length of the window whose labelled predictions quality is computed over (labels arrive "
        "days after the prediction, so it is longer than the drift window).",
    )
    interval_seconds: float = Field(default=60.0, gt=0, description="Time between two evaluations.")
    min_window_predictions: int = Field(
        default=200,
        ge=1,
        description="Predictions a version needs in the window before drift is computed; below that its drift "
        "gauges are absent (PSI over ten bins is noise on fewer).",
    )
    min_labelled_predictions: int = Field(
        default=50, ge=1, description="Labelled predictions a version needs before precision, recall, PR-AUC."
    )
    host: str = Field(default="0.0.0.0", description="Address the metrics endpoint binds to.")
    port: int = Field(default=9108, ge=0, le=65535, description="Port of /metrics and /healthz (0: any free port).")

    def log_dir(self, platform: PlatformSettings) -> Path:
        """The prediction log folder in force."""
        return (self.prediction_log_dir or platform.resolved_work_dir / "predictions").expanduser().resolve()

    def label_dir(self, platform: PlatformSettings) -> Path:
        """The label folder in force."""
        return (self.labels_dir or platform.resolved_work_dir / "labels").expanduser().resolve()

    def monitored_model(self, platform: PlatformSettings) -> str:
        """The registered model name in force."""
        return self.model_name or platform.registered_model_name


@dataclass(frozen=True)
class Window:
    """A time window (start, end], in seconds since the epoch."""

    start_unix_s: float
    end_unix_s: float

    @classmethod
    def ending(cls, end_unix_s: float, seconds: float) -> Window:
        """The window of `seconds` that ends at `end_unix_s`."""
        return cls(end_unix_s - seconds, end_unix_s)

    def contains(self, t: float) -> bool:
        """Whether `t` lies in (start, end]."""
        return self.start_unix_s < t <= self.end_unix_s

    def label(self) -> str:
        """Human-readable 'start .. end' in UTC."""
        return f"{_iso(self.start_unix_s)} .. {_iso(self.end_unix_s)}"


@dataclass(frozen=True)
class FeatureDrift:
    """One feature of one version in one window, against the training reference.

    Attributes:
        feature: Feature name.
        psi: Population stability index over the reference bins (NaN without finite live values).
        ks: KS distance at the reference bin edges; None for a discrete feature.
        missing_rate: Share of live values absent, null, NaN or infinite.
        skew: Standardized mean difference of live vs training values (signed).
        reference_mean: Training mean.
        live_mean: Mean of the finite live values (NaN when none).
        continuous: Whether the feature counts as continuous (has KS).
        reference_bins: The reference's bin proportions.
        live_bins: The live values' proportions over the same bins.
    """

    feature: str
    psi: float
    ks: float | None
    missing_rate: float
    skew: float
    reference_mean: float | None
    live_mean: float
    continuous: bool
    reference_bins: list[float] = field(default_factory=list, repr=False)
    live_bins: list[float] = field(default_factory=list, repr=False)

    @property
    def status(self) -> str:
        """ok, watch (PSI >= PSI_WARN) or drift (PSI >= PSI_ALERT, or KS >= KS_ALERT)."""
        return drift_status(self.psi, self.ks)


@dataclass(frozen=True)
class Quality:
    """Quality of one version's labelled predictions in the quality window.

    Attributes:
        labelled: Predictions in the window with a known label.
        positives: Of those, labelled fraud.
        precision: Precision at the operating threshold; None below the minimum count or without a flagged one.
        recall: Recall at the operating threshold; None below the minimum count or without a fraud label.
        pr_auc: Average precision; None below the minimum count or with one class only.
    """

    labelled: int
    positives: int
    precision: float | None = None
    recall: float | None = None
    pr_auc: float | None = None


@dataclass(frozen=True)
class ModelReference:
    """What the monitor needs of a model version's artifact.

    Attributes:
        model_name: Registered model name.
        model_version: Registry version.
        stats: The reference statistics (`stats.reference_stats` layout).
        threshold: Operating threshold of the version.
        created_unix_s: When the version was registered (None when unknown).
        source: The artifact folder read.
    """

    model_name: str
    model_version: str
    stats: dict[str, Any]
    threshold: float
    created_unix_s: float | None
    source: Path


@dataclass
class VersionReport:
    """Drift and quality of one model version in one window.

    Attributes:
        model_name: Registered model name.
        model_version: Registry version.
        predictions: Predictions of the version in the drift window.
        features: Per-feature drift (empty when skipped or failed).
        score_psi: PSI of the score (None when not computed).
        score_ks: KS of the score (None when not computed).
        score_reference_bins: Reference score bin proportions.
        score_live_bins: Live score proportions over the same bins.
        quality: Quality over the quality window.
        model_age_seconds: Window end minus the version's registration time.
        skipped: Why drift was not computed (too few predictions), or None.
        error: What went wrong (unknown version, no reference), or None.
    """

    model_name: str
    model_version: str
    predictions: int
    features: list[FeatureDrift] = field(default_factory=list)
    score_psi: float | None = None
    score_ks: float | None = None
    score_reference_bins: list[float] = field(default_factory=list, repr=False)
    score_live_bins: list[float] = field(default_factory=list, repr=False)
    quality: Quality | None = None
    model_age_seconds: float | None = None
    skipped: str | None = None
    error: str | None = None

    @property
    def outcome(self) -> str:
        """ok, skipped (too few predictions) or error."""
        return "error" if self.error else "skipped" if self.skipped else "ok"

    @property
    def has_drift_values(self) -> bool:
        """Whether drift was computed for this version."""
        return self.outcome == "ok" and bool(self.features)


@dataclass
class MonitorResult:
    """One evaluation: every version seen in the drift or quality window.

    Attributes:
        window: The drift window.
        quality_window: The quality window (ends with the drift window).
        versions: One report per (model name, version), ordered by version.
        evaluated_at_unix_s: When it was computed.
    """

    window: Window
    quality_window: Window
    versions: list[VersionReport]
    evaluated_at_unix_s: float


# ----------------------------------------------------------------------------------------------- math


def drift_status(psi_value: float | None, ks_value: float | None = None) -> str:
    """ok, watch or drift for a PSI (and optional KS) value."""
    p = psi_value if psi_value is not None and math.isfinite(psi_value) else 0.0
    k = ks_value if ks_value is not None and math.isfinite(ks_value) else 0.0
    if p >= PSI_ALERT or k >= KS_ALERT:
        return "drift"
    return "watch" if p >= PSI_WARN else "ok"


def is_continuous(reference_column: Mapping[str, Any]) -> bool:
    """Whether a reference column has at least `CONTINUOUS_MIN_BINS` distinct quantile bins."""
    return len(reference_column.get("proportions") or []) >= CONTINUOUS_MIN_BINS


def missing_rate(values: np.ndarray) -> float:
    """Share of values that are NaN or infinite (absent values arrive as NaN); 0 for an empty array."""
    v = np.asarray(values, dtype=np.float64)
    return float((~np.isfinite(v)).mean()) if v.size else 0.0


def feature_drift(feature: str, reference_column: Mapping[str, Any], values: np.ndarray) -> FeatureDrift:
    """Drift, missing rate and skew of one feature's live values against its reference column."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    continuous = is_continuous(reference_column)
    return FeatureDrift(
        feature=feature,
        psi=psi(reference_column, v),
        ks=ks_statistic(reference_column, v) if continuous else None,
        missing_rate=missing_rate(v),
        skew=standardized_mean_difference(reference_column, v),
        reference_mean=reference_column.get("mean"),
        live_mean=float(finite.mean()) if finite.size else float("nan"),
        continuous=continuous,
        reference_bins=list(reference_column.get("proportions") or []),
        live_bins=bin_proportions(reference_column, v).tolist(),
    )


def _number(value: Any) -> float:
    """A logged value as float; None and non-numbers as NaN."""
    if value is None or isinstance(value, bool):
        return float("nan") if value is None else float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def live_columns(records: Sequence[Mapping[str, Any]], feature_names: Iterable[str]) -> dict[str, np.ndarray]:
    """Each feature's logged values across `records` (NaN where a record lacks it or holds null)."""
    return {
        f: np.fromiter((_number((r.get("features") or {}).get(f)) for r in records), np.float64, len(records))
        for f in feature_names
    }


def quality_of(pairs: Sequence[tuple[Mapping[str, Any], int]], threshold: float, min_labelled: int) -> Quality:
    """Precision, recall (at `threshold`) and PR-AUC of labelled predictions (`labels.join_labels` output).

    Metrics are None below `min_labelled` pairs, precision without a flagged prediction, recall without a
    fraud label, PR-AUC with one class only: absent rather than a misleading 0.
    """
    y = np.fromiter((lab for _, lab in pairs), np.int64, len(pairs))
    positives = int(y.sum())
    if len(pairs) < min_labelled:
        return Quality(len(pairs), positives)
    from mlplatform.evaluation import binary_metrics  # scikit-learn: seconds to import, only when needed

    scores = np.fromiter((_number(r.get("score")) for r, _ in pairs), np.float64, len(pairs))
    keep = np.isfinite(scores)
    y, scores = y[keep], scores[keep]
    m = binary_metrics(y, scores, threshold)
    flagged = int((scores >= threshold).sum())
    return Quality(
        labelled=len(pairs),
        positives=positives,
        precision=m["precision"] if flagged else None,
        recall=m["recall"] if int(y.sum()) else None,
        pr_auc=m["pr_auc"] if math.isfinite(m["pr_auc"]) else None,
    )


def drift_of(report: VersionReport, reference: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> None:
    """Fill a version report's feature and score drift from its window's records."""
    feats: Mapping[str, Any] = reference.get("features") or {}
    columns = live_columns(records, feats)
    report.features = [feature_drift(name, col, columns[name]) for name, col in feats.items()]
    score_ref = reference.get("score")
    if score_ref:
        scores = np.fromiter((_number(r.get("score")) for r in records), np.float64, len(records))
        report.score_psi = psi(score_ref, scores)
        report.score_ks = ks_statistic(score_ref, scores)
        report.score_reference_bins = list(score_ref.get("proportions") or [])
        report.score_live_bins = bin_proportions(score_ref, scores).tolist()


# ------------------------------------------------------------------------------------------ inputs


def served_unix_s(record: Mapping[str, Any]) -> float | None:
    """When a record was served (its `served_at`), in seconds since the epoch; None when absent or invalid."""
    raw = record.get("served_at")
    if not raw:
        return None
    try:
        t = datetime.fromisoformat(str(raw))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


#: What quality needs of a prediction outside the drift window (the rest is dropped to bound memory).
QUALITY_FIELDS = ("model_name", "model_version", "record_id", "transaction_id", "score", "_served_unix_s")


def load_predictions(
    log_dir: Path,
    model_name: str,
    since_unix_s: float,
    missing_ok: bool = False,
    full_since_unix_s: float | None = None,
    labelled: Container[str] | None = None,
) -> list[dict[str, Any]]:
    """Records of `model_name` served after `since_unix_s`, each with `_served_unix_s` added.

    With `full_since_unix_s` and `labelled`, a record served at or before `full_since_unix_s` (outside
    every drift window) is kept only when its id has a label, and only with `QUALITY_FIELDS`: a week of
    traffic is not held in memory for the quality window.

    Raises:
        MonitorError: When the folder does not exist (unless `missing_ok`: then there are no records).
    """
    from serving.prediction_log import read_records

    if not log_dir.is_dir():
        if missing_ok:
            return []
        raise MonitorError(
            f"prediction log folder {log_dir} does not exist; serve traffic first (`mlplatform serve`) or point "
            "MLPLATFORM_MONITOR_PREDICTION_LOG_DIR / --prediction-log-dir at the serving log"
        )
    out = []
    for r in read_records(log_dir):
        t = served_unix_s(r)
        if t is None or t <= since_unix_s or r.get("model_name") != model_name:
            continue
        r["_served_unix_s"] = t
        if full_since_unix_s is not None and labelled is not None and t <= full_since_unix_s:
            if record_key(r) not in labelled:
                continue
            r = {k: r.get(k) for k in QUALITY_FIELDS}
        out.append(r)
    return out


class ReferenceResolver:
    """Finds (and caches) each model version's reference statistics, threshold and registration time.

    With `model_dir` every version is compared with that artifact. Otherwise the version's artifact
    comes from the MLflow registry, downloaded once under `<work_dir>/serving` (`deploy.prepare_local`).

    Args:
        platform: Tracking URI and work dir.
        model_dir: An artifact folder to use for every version, or None.
    """

    def __init__(self, platform: PlatformSettings, model_dir: Path | None = None) -> None:
        self.platform = platform
        self.model_dir = model_dir
        self._cache: dict[tuple[str, str], ModelReference] = {}
        self._lock = threading.Lock()

    @property
    def source(self) -> str:
        """Where references come from, for messages."""
        return str(self.model_dir) if self.model_dir is not None else self.platform.tracking_uri

    def get(self, model_name: str, model_version: str) -> ModelReference:
        """The reference of a version.

        Raises:
            UnknownModelVersion: When the registry has no such version.
            ReferenceUnavailable: When its artifact has no reference statistics or cannot be read.
        """
        key = (model_name, model_version)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._load(model_name, model_version)
            return self._cache[key]

    def _load(self, model_name: str, model_version: str) -> ModelReference:
        from mlplatform.deploy import ArtifactInvalid, prepare_local, verify_artifact
        from mlplatform.model import load_reference_stats

        created: float | None = None
        try:
            if self.model_dir is not None:
                folder = self.model_dir.expanduser().resolve()
                config = verify_artifact(folder)
            else:
                version, created = self._registry_version(model_name, model_version)
                folder = prepare_local(self.platform, version)
                config = verify_artifact(folder)
        except ArtifactInvalid as exc:
            raise ReferenceUnavailable(str(exc)) from exc
        stats = load_reference_stats(folder)
        if not stats or not stats.get("features"):
            raise ReferenceUnavailable(
                f"the artifact of {model_name} version {model_version} in {folder} has no reference statistics "
                "(reference_stats.json); retrain it with the current train step"
            )
        return ModelReference(model_name, model_version, stats, float(config["threshold"]), created, folder)

    def _registry_version(self, model_name: str, model_version: str) -> tuple[Any, float | None]:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from mlplatform import tracking

        tracking.configure(self.platform)
        try:
            mv = MlflowClient().get_model_version(model_name, model_version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise UnknownModelVersion(
                    f"model {model_name!r} has no version {model_version!r} in {self.platform.tracking_uri}; "
                    "check MLPLATFORM_MLFLOW_TRACKING_URI, or compare with one artifact (--model-dir)"
                ) from exc
            raise
        if not mv.source:
            raise ReferenceUnavailable(f"{model_name} version {model_version} has no artifact source in the registry")
        version = tracking.RegisteredVersion(
            mv.name, str(mv.version), mv.source, mv.run_id, list(mv.aliases), dict(mv.tags)
        )
        created = mv.creation_timestamp / 1000.0 if mv.creation_timestamp else None
        return version, created


# ---------------------------------------------------------------------------------------- evaluation


def evaluate(
    predictions: Sequence[Mapping[str, Any]],
    labels: Mapping[str, Label],
    window: Window,
    quality_window: Window,
    settings: MonitorSettings,
    resolver: ReferenceResolver,
    now_unix_s: float | None = None,
) -> MonitorResult:
    """Drift and quality of every version with predictions in `window` or `quality_window`.

    Args:
        predictions: Prediction records with `_served_unix_s` (`load_predictions`).
        labels: Known labels by transaction id (`labels.read_labels`).
        window: The drift window.
        quality_window: The quality window.
        settings: Minimum counts.
        resolver: Where the versions' references come from.
        now_unix_s: Evaluation time (default: now).
    """
    drift_recs: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    quality_recs: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in predictions:
        key = (str(r.get("model_name")), str(r.get("model_version")))
        t = r["_served_unix_s"]
        if window.contains(t):
            drift_recs[key].append(r)
        if quality_window.contains(t):
            quality_recs[key].append(r)
    reports = []
    for key in sorted(set(drift_recs) | set(quality_recs), key=_version_order):
        name, version = key
        recs = drift_recs.get(key, [])
        report = VersionReport(name, version, len(recs))
        pairs = join_labels(quality_recs.get(key, []), labels)
        report.quality = Quality(len(pairs), sum(lab for _, lab in pairs))
        if len(recs) < settings.min_window_predictions:
            report.skipped = (
                f"{len(recs)} predictions in the window, fewer than min_window_predictions="
                f"{settings.min_window_predictions}"
            )
        try:
            ref = resolver.get(name, version)
        except MonitorError as exc:
            report.error = str(exc)
        except Exception as exc:  # the registry unreachable: MLflow and HTTP clients raise their own types
            report.error = f"cannot read the reference of {name} version {version} from {resolver.source}: {exc}"
        if report.error:
            reports.append(report)
            continue
        if ref.created_unix_s is not None:
            report.model_age_seconds = max(0.0, window.end_unix_s - ref.created_unix_s)
        report.quality = quality_of(pairs, ref.threshold, settings.min_labelled_predictions)
        if report.skipped is None:
            drift_of(report, ref.stats, recs)
        reports.append(report)
    return MonitorResult(window, quality_window, reports, time.time() if now_unix_s is None else now_unix_s)


def _version_order(key: tuple[str, str]) -> tuple[str, int, str]:
    name, version = key
    return (name, int(version) if version.isdigit() else 1 << 62, version)


def evaluate_windows(
    settings: MonitorSettings,
    platform: PlatformSettings,
    end_unix_s: float,
    count: int = 1,
    resolver: ReferenceResolver | None = None,
    missing_log_ok: bool = False,
    model_version: str | None = None,
) -> list[MonitorResult]:
    """`count` consecutive drift windows ending at `end_unix_s`, oldest first (the log is read once).

    With `model_version` only that version's predictions are evaluated.

    Raises:
        MonitorError: When the log folder is missing (unless `missing_log_ok`: no traffic yet).
        mlplatform.labels.LabelFeedError: When the label feed is malformed.
    """
    resolver = resolver or ReferenceResolver(platform, settings.model_dir)
    drift_start = end_unix_s - settings.window_seconds * count
    labels = read_labels(settings.label_dir(platform))
    predictions = load_predictions(
        settings.log_dir(platform),
        settings.monitored_model(platform),
        min(drift_start, end_unix_s - settings.quality_window_seconds),
        missing_log_ok,
        full_since_unix_s=drift_start,
        labelled=labels,
    )
    if model_version is not None:
        predictions = [r for r in predictions if str(r.get("model_version")) == model_version]
    out = []
    for i in reversed(range(count)):
        end = end_unix_s - i * settings.window_seconds
        out.append(
            evaluate(
                predictions,
                labels,
                Window.ending(end, settings.window_seconds),
                Window.ending(end, settings.quality_window_seconds),
                settings,
                resolver,
            )
        )
    return out


def require_evidence(
    results: Sequence[MonitorResult],
    settings: MonitorSettings,
    platform: PlatformSettings,
    model_version: str | None = None,
) -> None:
    """Check that the windows hold something to report (for people asking on the command line).

    Raises:
        MonitorError: When every window is empty (no predictions of the model, or of `model_version`),
            or when every version seen failed (an unknown version, an artifact without reference).
    """
    versions = [v for r in results for v in r.versions]
    what = f"model {settings.monitored_model(platform)!r}" + (
        f" version {model_version!r}" if model_version is not None else ""
    )
    if not any(v.predictions for v in versions):
        span = f"{_iso(results[0].window.start_unix_s)} .. {_iso(results[-1].window.end_unix_s)}"
        raise MonitorError(
            f"no predictions of {what} were served in the window {span} (log {settings.log_dir(platform)}); "
            "pick another --window-end / --window-seconds, or serve traffic first"
        )
    if all(v.error for v in versions):
        errors = sorted({v.error for v in versions if v.error})
        raise MonitorError("; ".join(errors))


# ------------------------------------------------------------------------------------------ metrics

_VERSION_LABELS = ("model_name", "model_version")
_FEATURE_LABELS = ("model_name", "model_version", "feature")
#: name -> (help, labels) of the gauges the collector exports from the latest result.
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "mlplatform_drift_psi": ("PSI of a feature's live window against the training reference.", _FEATURE_LABELS),
    "mlplatform_drift_ks": ("KS distance of a continuous feature's live values vs the reference.", _FEATURE_LABELS),
    "mlplatform_score_psi": ("PSI of the live score distribution against the training scores.", _VERSION_LABELS),
    "mlplatform_score_ks": ("KS distance of the live scores against the training scores.", _VERSION_LABELS),
    "mlplatform_feature_missing_rate": (
        "Share of a feature's live values that are missing, null, NaN or infinite.",
        _FEATURE_LABELS,
    ),
    "mlplatform_feature_skew": (
        "Training-serving skew: (live mean - training mean) / pooled std (signed).",
        _FEATURE_LABELS,
    ),
    "mlplatform_quality_precision": ("Precision at the operating threshold on labelled predictions.", _VERSION_LABELS),
    "mlplatform_quality_recall": ("Recall at the operating threshold on labelled predictions.", _VERSION_LABELS),
    "mlplatform_quality_pr_auc": ("PR-AUC (average precision) on labelled predictions.", _VERSION_LABELS),
    "mlplatform_quality_labelled_predictions": (
        "Predictions in the quality window whose label is known.",
        _VERSION_LABELS,
    ),
    "mlplatform_monitor_window_predictions": ("Predictions of the version in the drift window.", _VERSION_LABELS),
    "mlplatform_model_age_seconds": ("Time since the model version was registered.", _VERSION_LABELS),
}


Samples = dict[str, list[tuple[tuple[str, ...], float]]]


def _add(out: Samples, name: str, labels: tuple[str, ...], value: float | None) -> None:
    if value is not None and not math.isnan(value):
        out[name].append((labels, float(value)))


def metric_samples(result: MonitorResult) -> Samples:
    """The gauge samples of one result: name -> [(label values, value)]; NaN and unknown values are left out."""
    out: Samples = {name: [] for name in GAUGES}
    for v in result.versions:
        ids = (v.model_name, v.model_version)
        _add(out, "mlplatform_monitor_window_predictions", ids, v.predictions)
        _add(out, "mlplatform_model_age_seconds", ids, v.model_age_seconds)
        if v.quality is not None:
            _add(out, "mlplatform_quality_labelled_predictions", ids, v.quality.labelled)
            _add(out, "mlplatform_quality_precision", ids, v.quality.precision)
            _add(out, "mlplatform_quality_recall", ids, v.quality.recall)
            _add(out, "mlplatform_quality_pr_auc", ids, v.quality.pr_auc)
        if not v.has_drift_values:
            continue  # too few predictions (or no reference): drift gauges absent, not 0
        _add(out, "mlplatform_score_psi", ids, v.score_psi)
        _add(out, "mlplatform_score_ks", ids, v.score_ks)
        for f in v.features:
            fid = (*ids, f.feature)
            _add(out, "mlplatform_drift_psi", fid, f.psi)
            _add(out, "mlplatform_drift_ks", fid, f.ks)
            _add(out, "mlplatform_feature_missing_rate", fid, f.missing_rate)
            _add(out, "mlplatform_feature_skew", fid, f.skew)
    return out


class MonitorCollector(Collector):
    """Serves the gauges of the latest result as one consistent snapshot (a version that left the window
    disappears with it)."""

    def __init__(self) -> None:
        self._samples: Samples = {name: [] for name in GAUGES}
        self._lock = threading.Lock()

    def update(self, result: MonitorResult) -> None:
        """Replace the exported values with those of `result`."""
        samples = metric_samples(result)
        with self._lock:
            self._samples = samples

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            samples = self._samples
        for name, (doc, labels) in GAUGES.items():
            family = GaugeMetricFamily(name, doc, labels=list(labels))
            for values, value in samples[name]:
                family.add_metric(list(values), value)
            yield family


class Monitor:
    """The monitor process: evaluates every interval, serves /metrics and /healthz.

    Args:
        settings: What to watch and how often.
        platform: Tracking URI and work dir.
        registry: Where the metrics live (a fresh registry by default).
        clock: Source of the current time (seconds since the epoch).
    """

    def __init__(
        self,
        settings: MonitorSettings,
        platform: PlatformSettings,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.platform = platform
        self.registry = registry or CollectorRegistry()
        self.clock = clock
        self.resolver = ReferenceResolver(platform, settings.model_dir)
        self.collector = MonitorCollector()
        self.registry.register(self.collector)
        self.runs = Counter(
            "mlplatform_monitor_runs",
            "Evaluations per model version by outcome: ok, skipped (too few predictions, or no traffic at all), error.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.runs.labels(outcome=outcome)
        self.last_success = Gauge(
            "mlplatform_monitor_last_success_timestamp_seconds",
            "When an evaluation last completed without error.",
            registry=self.registry,
        )
        self.stop_event = threading.Event()
        self._last_cycle_end = clock()
        self._server: ThreadingHTTPServer | None = None

    def run_once(self) -> MonitorResult | None:
        """One evaluation: update the gauges and count the outcome of each version (None when it failed)."""
        started = self.clock()
        try:
            # A log folder that does not exist yet means no traffic yet (skipped), not a failure.
            [result] = evaluate_windows(self.settings, self.platform, started, 1, self.resolver, missing_log_ok=True)
        except Exception:
            log.exception("monitor evaluation failed")
            self.runs.labels(outcome="error").inc()
            return None
        finally:
            self._last_cycle_end = self.clock()
        self.collector.update(result)
        if not result.versions:
            self.runs.labels(outcome="skipped").inc()
        for v in result.versions:
            self.runs.labels(outcome=v.outcome).inc()
            if v.error:
                log.warning("model %s version %s: %s", v.model_name, v.model_version, v.error)
        if all(v.outcome != "error" for v in result.versions):
            self.last_success.set(self.clock())
        log.info(
            "evaluated %s: %s",
            result.window.label(),
            ", ".join(f"v{v.model_version} {v.outcome} ({v.predictions} predictions)" for v in result.versions)
            or "no predictions",
        )
        return result

    def healthy(self) -> bool:
        """Whether the evaluation loop is alive (a cycle ended within three intervals plus a minute)."""
        return self.clock() - self._last_cycle_end <= 3 * self.settings.interval_seconds + 60

    def run_forever(self) -> None:
        """Evaluate every interval until `stop_event` is set."""
        while not self.stop_event.is_set():
            self.run_once()
            self.stop_event.wait(self.settings.interval_seconds)

    def start_http(self) -> int:
        """Serve /metrics and /healthz in a background thread; returns the bound port."""
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(monitor.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = monitor.healthy()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"evaluation loop stalled\n", "text/plain")
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer((self.settings.host, self.settings.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="monitor-http", daemon=True).start()
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop the loop and the HTTP server."""
        self.stop_event.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def serve(self) -> None:
        """Serve until SIGTERM or SIGINT: the HTTP endpoint in the background, the loop in this thread."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        port = self.start_http()
        log.info(
            "monitor of %s on http://%s:%d/metrics (log %s, labels %s, window %ss, every %ss)",
            self.settings.monitored_model(self.platform),
            self.settings.host,
            port,
            self.settings.log_dir(self.platform),
            self.settings.label_dir(self.platform),
            self.settings.window_seconds,
            self.settings.interval_seconds,
        )
        try:
            self.run_forever()
        finally:
            self.stop()
            log.info("monitor stopped")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def usage() -> str:
    """What `python -m mlplatform.monitor --help` prints: the settings and their variables."""
    lines = ["usage: python -m mlplatform.monitor   (no arguments; settings from the environment)", ""]
    for name, f in MonitorSettings.model_fields.items():
        lines.append(f"  MLPLATFORM_MONITOR_{name.upper()}  (default {f.default!r}): {f.description}")
    lines.append("  MLPLATFORM_MLFLOW_TRACKING_URI, MLPLATFORM_WORK_DIR, ...: see mlplatform.settings.PlatformSettings")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: `python -m mlplatform.monitor` (settings from MLPLATFORM_MONITOR_* and MLPLATFORM_*)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        print(usage(), file=sys.stdout if args[0] in ("-h", "--help") else sys.stderr)
        raise SystemExit(0 if args[0] in ("-h", "--help") else 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Monitor(MonitorSettings(), PlatformSettings()).serve()


if __name__ == "__main__":
    main()
