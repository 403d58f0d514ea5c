"""`mlplatform monitor`: drift and quality of the served versions, as tables and reports or as gauges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mlplatform.cli.common import (
    WorkDir,
    console,
    guarded,
    parse_time,
)
from mlplatform.data.labels import emit_labels, record_key, write_labels
from mlplatform.errors import ConfigError
from mlplatform.events import LABELS
from mlplatform.monitoring.exporter import Monitor
from mlplatform.monitoring.inputs import open_inputs, publish_labels
from mlplatform.monitoring.references import MonitorError
from mlplatform.monitoring.report import feature_table, summary_table, write_report
from mlplatform.monitoring.settings import MonitorSettings
from mlplatform.monitoring.windows import evaluate_windows, require_evidence
from mlplatform.settings import PlatformSettings, load_settings

# --- monitor: drift, skew and delayed-label quality (mlplatform/monitoring/) ---
monitor_app = typer.Typer(
    help="Drift and quality of the served versions: `show` (the default) prints and reports, `serve` exports "
    "Prometheus gauges.",
    invoke_without_command=True,
)

LogDir = Annotated[
    Path | None, typer.Option("--prediction-log-dir", help="Prediction log folder (default <work-dir>/predictions).")
]

LabelsDir = Annotated[Path | None, typer.Option("--labels-dir", help="Label feed folder (default <work-dir>/labels).")]

ModelDir = Annotated[
    Path | None,
    typer.Option("--model-dir", help="Compare every version with this artifact (default: each version's own)."),
]

WindowSeconds = Annotated[float | None, typer.Option("--window-seconds", help="Drift window length in seconds.")]


def _monitor_settings(**options: Any) -> MonitorSettings:

    return load_settings(MonitorSettings, **options)


@monitor_app.callback()
def monitor_default(ctx: typer.Context) -> None:
    """Without a subcommand: `monitor show` with its defaults."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(monitor_show)


@monitor_app.command("show")
@guarded
def monitor_show(
    work_dir: WorkDir = None,
    prediction_log_dir: LogDir = None,
    labels_dir: LabelsDir = None,
    model_dir: ModelDir = None,
    model_version: Annotated[str | None, typer.Option("--model-version", help="Only this version.")] = None,
    window_seconds: WindowSeconds = None,
    quality_window_seconds: Annotated[
        float | None, typer.Option("--quality-window-seconds", help="Quality window length in seconds.")
    ] = None,
    window_end: Annotated[
        str | None, typer.Option("--window-end", help="End of the (last) window, ISO-8601 (default: now).")
    ] = None,
    windows: Annotated[int, typer.Option("--windows", min=1, help="Consecutive windows to report.")] = 1,
    min_window_predictions: Annotated[
        int | None, typer.Option("--min-window-predictions", help="Fewest predictions for drift values.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Report folder (default <work-dir>/monitor/reports).")
    ] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write Markdown + PNG per window.")] = True,
) -> None:
    """Show current drift and quality per model version; write a drift report (Markdown + PNG) per window."""
    import time

    platform = load_settings(PlatformSettings, work_dir=work_dir)
    settings = _monitor_settings(
        prediction_log_dir=prediction_log_dir,
        labels_dir=labels_dir,
        model_dir=model_dir,
        window_seconds=window_seconds,
        quality_window_seconds=quality_window_seconds,
        min_window_predictions=min_window_predictions,
    )
    end = time.time()
    if window_end is not None:
        end = parse_time(window_end, "--window-end").timestamp()
    if model_dir is not None and not model_dir.is_dir():
        raise MonitorError(f"--model-dir {model_dir} is not a folder")
    results = evaluate_windows(settings, platform, end, windows, model_version=model_version)
    require_evidence(results, settings, platform, model_version)
    folder = output or platform.resolved_work_dir / "monitor" / "reports"
    for result in results:
        console.print(summary_table(result))
        for v in result.versions:
            if v.features:
                console.print(feature_table(v))
            elif v.error or v.skipped:
                console.print(f"[yellow]{v.model_name} v{v.model_version}:[/] {v.error or v.skipped}")
        if report and result.versions:
            console.print(f"report: {write_report(result, folder) / 'report.md'}")


@monitor_app.command("serve")
@guarded
def monitor_serve(
    work_dir: WorkDir = None,
    prediction_log_dir: LogDir = None,
    labels_dir: LabelsDir = None,
    model_dir: ModelDir = None,
    window_seconds: WindowSeconds = None,
    interval_seconds: Annotated[float | None, typer.Option("--interval-seconds", help="Seconds between runs.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port of /metrics and /healthz.")] = None,
) -> None:
    """Run the monitor process: evaluate every interval, serve Prometheus gauges until Ctrl-C or SIGTERM."""
    import logging

    settings = _monitor_settings(
        prediction_log_dir=prediction_log_dir,
        labels_dir=labels_dir,
        model_dir=model_dir,
        window_seconds=window_seconds,
        interval_seconds=interval_seconds,
        port=port,
    )
    platform = load_settings(PlatformSettings, work_dir=work_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Monitor(settings, platform).serve()


@monitor_app.command("emit-labels")
@guarded
def monitor_emit_labels(
    transactions: Annotated[Path, typer.Option("--transactions", help="Generated transactions (Parquet).")],
    until: Annotated[str, typer.Option("--until", help="Emit labels known by this time (ISO-8601, data time).")],
    since: Annotated[str | None, typer.Option("--since", help="Labels up to this time were emitted.")] = None,
    work_dir: WorkDir = None,
    prediction_log_dir: LogDir = None,
    labels_dir: LabelsDir = None,
) -> None:
    """Replay delayed labels: write the labels of served transactions that became known by --until (to the label
    folder, or to the labels topic where MLPLATFORM_MONITOR_KAFKA_BOOTSTRAP_SERVERS is set)."""

    import pandas as pd

    platform = load_settings(PlatformSettings, work_dir=work_dir)
    settings = _monitor_settings(prediction_log_dir=prediction_log_dir, labels_dir=labels_dir)
    if not transactions.is_file():
        raise ConfigError(f"--transactions {transactions} does not exist")
    inputs = open_inputs(settings, platform)  # the prediction log, or the predictions topic where Kafka is set
    try:
        served = inputs.predictions(settings.monitored_model(platform), float("-inf"), False, None, None)
    finally:
        inputs.close()
    ids = {k for k in map(record_key, served) if k}
    known_by, emitted = parse_time(until, "--until"), parse_time(since, "--since") if since else None
    raw = pd.read_parquet(transactions)
    frame = emit_labels(raw, ids, known_by, emitted)
    if settings.kafka_bootstrap_servers:
        customers = dict(zip(raw["transaction_id"].astype(str), raw["customer_id"].astype(int), strict=True))
        publish_labels(frame, customers, settings)
        print(json.dumps({"labels": len(frame), "served": len(ids), "topic": settings.topic_name(LABELS)}))
        return
    path = write_labels(frame, settings.label_dir(platform))
    print(json.dumps({"labels": len(frame), "served": len(ids), "file": str(path) if path else None}))
