"""Evaluating windows of the prediction log: per model version, against the version's own reference."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from mlplatform.data.labels import Label, join_labels
from mlplatform.monitoring.drift import MonitorResult, Quality, VersionReport, Window, _iso, drift_of, quality_of
from mlplatform.monitoring.inputs import MonitorInputs, open_inputs
from mlplatform.monitoring.references import MonitorError, ReferenceResolver
from mlplatform.monitoring.settings import MonitorSettings
from mlplatform.settings import PlatformSettings

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
    inputs: MonitorInputs | None = None,
) -> list[MonitorResult]:
    """`count` consecutive drift windows ending at `end_unix_s`, oldest first (the log is read once).

    With `model_version` only that version's predictions are evaluated. `inputs` is where predictions and labels
    come from (default: `inputs.open_inputs` of the settings, closed afterwards).

    Raises:
        MonitorError: When the log folder is missing (unless `missing_log_ok`: no traffic yet).
        mlplatform.data.labels.LabelFeedError: When the label feed is malformed.
    """
    resolver = resolver or ReferenceResolver(platform, settings.model_dir)
    drift_start = end_unix_s - settings.window_seconds * count
    source = inputs or open_inputs(settings, platform, count)
    try:
        labels = source.labels()
        predictions = source.predictions(
            settings.monitored_model(platform),
            min(drift_start, end_unix_s - settings.quality_window_seconds),
            missing_log_ok,
            drift_start,
            labels,
        )
    finally:
        if inputs is None:
            source.close()
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
