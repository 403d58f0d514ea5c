"""The `mlplatform` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mlplatform.errors import ConfigError, MlPlatformError
from mlplatform.params import PipelineParams, parse_params
from mlplatform.settings import PlatformSettings

app = typer.Typer(help="mlplatform: raw data to a registered fraud model and beyond.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Compile or submit the training pipeline.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
console = Console()
err_console = Console(stderr=True)

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
Trigger = Annotated[
    str | None,
    typer.Option("--trigger", help="Why the run starts (manual, schedule, alert:<name>@<fingerprint>); an MLflow tag."),
]


def _params(options: dict[str, Any]) -> PipelineParams:
    """The pipeline parameters among a command's options; an option left out keeps the pipeline default."""
    return parse_params({k: v for k, v in options.items() if k in PipelineParams.model_fields and v is not None})


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)


@app.command()
def run(
    work_dir: Annotated[Path, typer.Option("--work-dir", help="Folder for local state (data, stores, MLflow).")] = Path(
        ".mlplatform"
    ),
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
    serve: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve the champion afterwards and show a few predictions.")
    ] = True,
) -> None:
    """Run the training pipeline locally (kfp.local), then serve the champion and show real predictions."""
    from mlplatform.orchestration.runner import run_local

    options = dict(locals())
    try:
        params = _params(options)
        settings = PlatformSettings(work_dir=work_dir)
    except (ConfigError, ValueError) as exc:
        _fail(exc)
    console.rule("[bold]mlplatform: local training pipeline (kfp.local)")
    console.print(f"parameters: {params.model_dump()}")
    try:
        result = run_local(params, settings)
    except MlPlatformError as exc:
        _fail(exc)
    except RuntimeError as exc:  # kfp.local: a task failed; its log above says why
        _fail(f"pipeline failed: {exc}")
    print_summary(result.summary, result.settings, result.pipeline_root)
    if not result.summary["registered"]:
        raise typer.Exit(code=1)
    print_deployment(result.summary.get("deployment") or {})
    if serve:
        _demo_serving(result.settings)


def _demo_serving(settings: PlatformSettings) -> None:
    """Serve the champion locally, score a few transactions through the endpoint, print a curl example."""
    import httpx

    from mlplatform.local.serving import serve_local
    from mlplatform.local.traffic import demo_transactions

    console.rule("[bold]serving the champion locally (KServe transformer + predictor, Feast online store)")
    try:
        deployed, service = serve_local(settings, "champion")
    except Exception as exc:  # ArtifactInvalid, ServingStartError, ConfigError
        _fail(f"could not serve the champion: {exc}")
    with service:
        body = {"instances": demo_transactions(settings)}
        response = httpx.post(service.predict_url, json=body, timeout=10).json()
        table = Table(title=f"predictions of models:/{deployed.model_name} version {deployed.model_version}")
        for col in ("transaction", "customer", "merchant", "amount", "score", "fraud?", "flags"):
            table.add_column(col)
        for tx, p in zip(body["instances"], response["predictions"], strict=True):
            table.add_row(
                tx["transaction_id"],
                str(tx["customer_id"]),
                str(tx["merchant_id"]),
                f"{tx['amount']:,.2f}",
                f"{p['score']:.4f}",
                "yes" if p["is_fraud"] else "no",
                ",".join(p["flags"]) or "-",
            )
        console.print(table)
        example = json.dumps({"instances": body["instances"][:1]})
        console.print("Keep the endpoint up with [bold]mlplatform serve --port 8080[/] and call it:")
        print(
            "curl -s -H 'Content-Type: application/json' "
            f"http://127.0.0.1:8080/v1/models/{deployed.model_name}:predict -d '{example}'"
        )


def print_deployment(deployment: dict[str, Any]) -> None:
    """What the deploy-canary + analyse step did, with the rollout report when there was one."""
    from rich.markdown import Markdown

    if not deployment:
        return
    console.rule(f"[bold]deploy canary + analyse: {deployment.get('outcome') or deployment.get('action')}")
    report = deployment.get("report") or {}
    if report:
        from mlplatform.rollout.report import RolloutReport, StepRecord

        steps = [StepRecord(**step) for step in report.pop("steps", [])]
        console.print(Markdown(RolloutReport(**report, steps=steps).to_markdown()))
    else:
        console.print(deployment.get("reason", ""))


def print_summary(summary: dict[str, Any], settings: PlatformSettings, pipeline_root: Path) -> None:
    """The end-of-run summary: data, metrics vs baseline, the registered version, where things are."""
    table = Table(title="Training run summary", show_header=False)
    rows, fraud = summary["rows"], summary["fraud_rows"]
    table.add_row("rows", f"{rows:,} transactions, {fraud:,} fraud ({fraud / max(rows, 1):.2%})")
    table.add_row("test PR-AUC (model)", f"{summary['test_pr_auc']:.4f}")
    table.add_row(
        "test PR-AUC (rule baseline)",
        f"{summary['baseline_pr_auc']:.4f}  "
        f"(model = {summary['test_pr_auc'] / max(summary['baseline_pr_auc'], 1e-9):.2f}x baseline)",
    )
    if summary.get("champion_pr_auc") is not None:
        table.add_row("test PR-AUC (champion before)", f"{summary['champion_pr_auc']:.4f}")
    if summary["registered"]:
        table.add_row(
            "registered",
            f"models:/{summary['model_name']} version {summary['version']} (aliases: {', '.join(summary['aliases'])})",
        )
    else:
        table.add_row("[red]rejected[/]", "; ".join(summary["reasons"]))
    table.add_row("MLflow tracking", settings.tracking_uri)
    table.add_row(
        "MLflow UI",
        f"mlflow ui --backend-store-uri {settings.tracking_uri} --port 5000  # then open http://127.0.0.1:5000",
    )
    table.add_row("pipeline artifacts", str(pipeline_root))
    console.print(table)


WorkDir = Annotated[Path, typer.Option("--work-dir", help="Folder of local state (as given to `run`).")]
Alias = Annotated[str, typer.Option("--alias", help="Registry alias to deploy (models:/fraud-detector@ALIAS).")]


@app.command()
def deploy(
    alias: Alias = "champion",
    target: Annotated[
        str | None, typer.Option("--target", help="local or cluster (default: MLPLATFORM_DEPLOY_TARGET, local).")
    ] = None,
    canary_percent: Annotated[
        int | None, typer.Option("--canary-percent", min=0, max=100, help="Traffic share of this version.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the InferenceService; apply nothing.")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the service is Ready.")] = True,
    work_dir: WorkDir = Path(".mlplatform"),
    port: Annotated[int, typer.Option("--port", help="Local transformer port.")] = 8080,
) -> None:
    """Deploy the version behind a registry alias: an InferenceService on a cluster, or processes on localhost."""
    import yaml

    from mlplatform.deploy import artifact, cluster

    try:
        settings = PlatformSettings(work_dir=work_dir, **({"deploy_target": target} if target else {}))
        if dry_run:
            version = artifact.resolve(settings, alias)
            uri = (
                artifact.storage_uri(version.source, settings)
                if settings.deploy_target == "cluster"
                else artifact.prepare_local(settings, version).as_uri()
            )
            print(yaml.safe_dump(cluster.render_manifest(settings, version, uri, canary_percent), sort_keys=False))
            return
        if settings.deploy_target == "local":
            _serve_until_interrupted(settings, alias, port)
            return
        result = cluster.deploy(settings, alias, canary_percent, wait=wait)
    except (MlPlatformError, ValueError, RuntimeError) as exc:
        _fail(exc)
    print(json.dumps({k: v for k, v in json.loads(result.to_json()).items() if k != "manifest"}))


@app.command()
def serve(
    alias: Alias = "champion",
    port: Annotated[int, typer.Option("--port", help="Port of the endpoint (the transformer).")] = 8080,
    work_dir: WorkDir = Path(".mlplatform"),
) -> None:
    """Serve a registered version on localhost (transformer + predictor) until Ctrl-C."""
    try:
        settings = PlatformSettings(work_dir=work_dir)
    except ValueError as exc:
        _fail(exc)
    _serve_until_interrupted(settings, alias, port)


def _serve_until_interrupted(settings: PlatformSettings, alias: str, port: int) -> None:
    import signal
    import time

    from mlplatform.local.serving import serve_local

    # SIGTERM (kubectl, systemd, a supervisor) is Ctrl-C from the first moment: one that arrives while the
    # servers start stops those already started instead of killing this process and leaving them running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        deployed, service = serve_local(settings, alias, port=port)
    except KeyboardInterrupt:
        console.print("stopped before the servers were ready")
        return
    except Exception as exc:  # ArtifactInvalid, ServingStartError, ConfigError
        _fail(exc)
    crashed = False
    try:  # from here on, whatever is interrupted, the servers are stopped
        console.print(
            f"serving models:/{deployed.model_name} version {deployed.model_version} ({alias}) at "
            f"{service.predict_url}\n  metrics: {service.url}/metrics   logs: {service.log_dir}   Ctrl-C stops"
        )
        while not (crashed := any(p.poll() is not None for p in service.processes.values())):
            time.sleep(1.0)
        err_console.print(f"[red]a serving process exited; see {service.log_dir}[/]")
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the graceful stop short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        codes = service.stop()
        console.print(f"stopped ({codes})")
    if crashed:
        raise typer.Exit(1)


@pipeline_app.command("compile")
def pipeline_compile(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the IR YAML.")] = Path(
        "build/training_pipeline.yaml"
    ),
) -> None:
    """Compile the training pipeline to KFP IR YAML (upload it in the Kubeflow UI)."""
    from pipelines import compile_pipeline

    path = compile_pipeline(output)
    console.print(f"compiled the training pipeline to {path}")


@pipeline_app.command("submit")
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
) -> None:
    """Create a run of the training pipeline on a Kubeflow Pipelines endpoint."""
    import tempfile
    from urllib.parse import urlparse

    from mlplatform.orchestration.runner import submit
    from pipelines import compile_pipeline

    options = dict(locals())
    try:
        parsed = urlparse(host)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"--host must be an http(s) URL such as http://localhost:8888, got {host!r}")
        params = _params(options)
        if package is not None and not package.is_file():
            raise ConfigError(f"--package {package} does not exist")
    except ConfigError as exc:
        _fail(exc)
    pkg = package or compile_pipeline(Path(tempfile.mkdtemp()) / "training_pipeline.yaml")
    try:
        run_id = submit(host, pkg, params, experiment, run_name)
    except Exception as exc:  # the KFP client raises ApiException, urllib3 and connection errors
        _fail(f"could not create the run on {host}: {exc}")
    # Plain print: one unwrapped JSON line that scripts can parse.
    print(json.dumps({"run_id": run_id, "host": host, "experiment": experiment}))


# --- feedback loop: the Alertmanager webhook receiver and scheduled retraining (mlplatform/feedback/webhook.py) ---


@app.command()
def webhook(
    port: Annotated[int | None, typer.Option("--port", help="HTTP port (default 9109).")] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="local (kfp.local child process) or kfp (Kubeflow Pipelines API).")
    ] = None,
    kfp_host: Annotated[str | None, typer.Option("--kfp-host", help="KFP API endpoint (backend kfp).")] = None,
    cooldown_seconds: Annotated[
        float | None, typer.Option("--cooldown-seconds", help="No second run for a model within this time.")
    ] = None,
) -> None:
    """Receive Alertmanager notifications; a firing drift or quality alert starts a retraining run."""
    import logging

    from pydantic import ValidationError

    from mlplatform.feedback.webhook import WebhookSettings, serve

    options = {"port": port, "backend": backend, "kfp_host": kfp_host, "cooldown_seconds": cooldown_seconds}
    try:
        settings = WebhookSettings(**{k: v for k, v in options.items() if v is not None})
        settings.check()
    except (ConfigError, ValidationError) as exc:
        _fail(exc)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console.print(f"alert webhook on http://{settings.host}:{settings.port}/alerts (backend {settings.backend})")
    serve(settings)


@pipeline_app.command("schedule")
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
    import tempfile

    from mlplatform.orchestration.runner import schedule
    from pipelines import compile_pipeline

    options = {"n_transactions": n_transactions, "n_days": n_days, "seed": seed, "max_epochs": max_epochs}
    try:
        params = _params({**options, "trigger": "schedule"})
        if package is not None and not package.is_file():
            raise ConfigError(f"--package {package} does not exist")
    except ConfigError as exc:
        _fail(exc)
    pkg = package or compile_pipeline(Path(tempfile.mkdtemp()) / "training_pipeline.yaml")
    try:
        recurring_run_id = schedule(host, pkg, params, experiment, name, cron)
    except ConfigError as exc:
        _fail(exc)
    except Exception as exc:  # the KFP client raises ApiException, urllib3 and connection errors
        _fail(f"could not create the recurring run on {host}: {exc}")
    print(json.dumps({"recurring_run_id": recurring_run_id, "host": host, "cron": cron, "name": name}))


# --- monitor: drift, skew and delayed-label quality (mlplatform/monitoring/) ---
monitor_app = typer.Typer(
    help="Drift and quality of the served versions: `show` (the default) prints and reports, `serve` exports "
    "Prometheus gauges.",
    invoke_without_command=True,
)
app.add_typer(monitor_app, name="monitor")
LogDir = Annotated[
    Path | None, typer.Option("--prediction-log-dir", help="Prediction log folder (default <work-dir>/predictions).")
]
LabelsDir = Annotated[Path | None, typer.Option("--labels-dir", help="Label feed folder (default <work-dir>/labels).")]
ModelDir = Annotated[
    Path | None,
    typer.Option("--model-dir", help="Compare every version with this artifact (default: each version's own)."),
]
WindowSeconds = Annotated[float | None, typer.Option("--window-seconds", help="Drift window length in seconds.")]


def _monitor_settings(**options: Any) -> Any:
    from mlplatform.monitoring.settings import MonitorSettings

    return MonitorSettings(**{k: v for k, v in options.items() if v is not None})


@monitor_app.callback()
def monitor_default(ctx: typer.Context) -> None:
    """Without a subcommand: `monitor show` with its defaults."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(monitor_show)


@monitor_app.command("show")
def monitor_show(
    work_dir: WorkDir = Path(".mlplatform"),
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
    from datetime import UTC, datetime

    from mlplatform.monitoring.references import MonitorError
    from mlplatform.monitoring.report import feature_table, summary_table, write_report
    from mlplatform.monitoring.windows import evaluate_windows, require_evidence

    try:
        platform = PlatformSettings(work_dir=work_dir)
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
            parsed = datetime.fromisoformat(window_end)
            end = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
        if model_dir is not None and not model_dir.is_dir():
            raise MonitorError(f"--model-dir {model_dir} is not a folder")
        results = evaluate_windows(settings, platform, end, windows, model_version=model_version)
        require_evidence(results, settings, platform, model_version)
    except (MlPlatformError, ValueError) as exc:
        _fail(exc)
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
def monitor_serve(
    work_dir: WorkDir = Path(".mlplatform"),
    prediction_log_dir: LogDir = None,
    labels_dir: LabelsDir = None,
    model_dir: ModelDir = None,
    window_seconds: WindowSeconds = None,
    interval_seconds: Annotated[float | None, typer.Option("--interval-seconds", help="Seconds between runs.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port of /metrics and /healthz.")] = None,
) -> None:
    """Run the monitor process: evaluate every interval, serve Prometheus gauges until Ctrl-C or SIGTERM."""
    import logging

    from mlplatform.monitoring.exporter import Monitor

    try:
        settings = _monitor_settings(
            prediction_log_dir=prediction_log_dir,
            labels_dir=labels_dir,
            model_dir=model_dir,
            window_seconds=window_seconds,
            interval_seconds=interval_seconds,
            port=port,
        )
        platform = PlatformSettings(work_dir=work_dir)
    except ValueError as exc:
        _fail(exc)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Monitor(settings, platform).serve()


@monitor_app.command("emit-labels")
def monitor_emit_labels(
    transactions: Annotated[Path, typer.Option("--transactions", help="Generated transactions (Parquet).")],
    until: Annotated[str, typer.Option("--until", help="Emit labels known by this time (ISO-8601, data time).")],
    since: Annotated[str | None, typer.Option("--since", help="Labels up to this time were emitted.")] = None,
    work_dir: WorkDir = Path(".mlplatform"),
    prediction_log_dir: LogDir = None,
    labels_dir: LabelsDir = None,
) -> None:
    """Replay delayed labels: write the labels of served transactions that became known by --until."""
    from datetime import UTC, datetime

    import pandas as pd

    from mlplatform.data.labels import emit_labels, record_key, write_labels
    from mlplatform.monitoring.predictions import load_predictions

    def when(text: str) -> datetime:
        t = datetime.fromisoformat(text)
        return t if t.tzinfo else t.replace(tzinfo=UTC)

    try:
        platform = PlatformSettings(work_dir=work_dir)
        settings = _monitor_settings(prediction_log_dir=prediction_log_dir, labels_dir=labels_dir)
        if not transactions.is_file():
            raise ConfigError(f"--transactions {transactions} does not exist")
        served = load_predictions(settings.log_dir(platform), settings.monitored_model(platform), float("-inf"))
        ids = {k for k in map(record_key, served) if k}
        frame = emit_labels(pd.read_parquet(transactions), ids, when(until), when(since) if since else None)
        path = write_labels(frame, settings.label_dir(platform))
    except (MlPlatformError, ValueError) as exc:
        _fail(exc)
    print(json.dumps({"labels": len(frame), "served": len(ids), "file": str(path) if path else None}))


# ---------------------------------------------------------------- ML Test Score (issue 8)
@app.command("score")
def score_command(
    run_tests: Annotated[
        bool, typer.Option("--run/--no-run", help="Run the mapped tests and count only the passing ones.")
    ] = False,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the scores (JSON).")] = Path(
        "build/mltestscore.json"
    ),
) -> None:
    """The ML Test Score (Breck et al. 2017): each of the 28 checks mapped to this project's tests and monitoring."""
    from mlplatform import mltestscore

    try:
        result = mltestscore.score(run=run_tests)
    except (RuntimeError, ValueError, OSError) as exc:
        _fail(exc)
    table = Table(title="ML Test Score")
    for column in ("check", "title", "score", "how", "covered by"):
        table.add_column(column)
    for check in result["checks"]:
        covered = ", ".join(t.rsplit("::", 1)[-1] for t in check["tests"][:2]) or check["note"]
        table.add_row(check["id"], check["title"], f"{check['score']:g}", check["how"], covered)
    console.print(table)
    sections = "  ".join(f"{mltestscore.SECTION_TITLES[k]} {v:g}" for k, v in result["sections"].items())
    console.print(f"sections: {sections}   final score (minimum): [bold]{result['final']:g}[/]")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {output}")


# --- rollout ------------------------------------------------------------------------------------------------------

rollout_app = typer.Typer(help="Canary rollouts: start one, watch it, or decide it by hand.", no_args_is_help=True)
app.add_typer(rollout_app, name="rollout")
Target = Annotated[
    str | None, typer.Option("--target", help="local or cluster (default: MLPLATFORM_DEPLOY_TARGET, local).")
]


def _rollout_settings(work_dir: Path, target: str | None) -> tuple[PlatformSettings, Any]:
    from mlplatform.rollout.settings import CanarySettings

    settings = PlatformSettings(work_dir=work_dir, **({"deploy_target": target} if target else {}))
    return settings, CanarySettings()


@rollout_app.command("start")
def rollout_start(
    version: Annotated[
        str | None, typer.Option("--version", help="Version to roll out (default: the challenger alias).")
    ] = None,
    target: Target = None,
    work_dir: WorkDir = Path(".mlplatform"),
    port: Annotated[int, typer.Option("--port", help="Local: port of the splitter (the endpoint).")] = 8080,
    replay: Annotated[
        bool, typer.Option("--replay/--no-replay", help="Local: replay recent transactions through the endpoint.")
    ] = True,
) -> None:
    """Roll a version out against the champion, step by step, until it is promoted or rolled back."""
    from mlplatform import registry
    from mlplatform.deploy.artifact import resolve
    from mlplatform.rollout.backends import ClusterBackend, LocalBackend, report_root
    from mlplatform.rollout.controller import ControlFile, Controller, MlflowRecorder

    try:
        settings, canary = _rollout_settings(work_dir, target)
        champion = resolve(settings, registry.CHAMPION)
        challenger = (
            registry.get_version(settings.registered_model_name, version)
            if version
            else resolve(settings, registry.CHALLENGER)
        )
        root = report_root(settings)
        kwargs: dict[str, Any] = {"recorder": MlflowRecorder(settings.registered_model_name), "log": console.print}
        if settings.deploy_target == "cluster":
            backend: Any = ClusterBackend(settings, canary, champion, challenger)
            report = Controller(
                backend, canary, settings.registered_model_name, champion.version, challenger.version, root, **kwargs
            ).run()
        else:
            from contextlib import nullcontext

            from mlplatform.local.traffic import TrafficGenerator, sample_transactions

            with LocalBackend(settings, canary, champion, challenger, port=port) as backend:
                console.print(f"endpoint: {backend.predict_url}  (status: mlplatform rollout status)")
                traffic = (
                    TrafficGenerator(
                        backend.predict_url, sample_transactions(settings, 2_000), rps=canary.local_replay_rps
                    )
                    if replay
                    else nullcontext()
                )
                with traffic:
                    report = Controller(
                        backend,
                        canary,
                        settings.registered_model_name,
                        champion.version,
                        challenger.version,
                        root,
                        control=ControlFile(root / "current.json"),
                        **kwargs,
                    ).run()
    except (MlPlatformError, ValueError) as exc:
        _fail(exc)
    from rich.markdown import Markdown

    console.print(Markdown(report.to_markdown()))


@rollout_app.command("status")
def rollout_status(target: Target = None, work_dir: WorkDir = Path(".mlplatform")) -> None:
    """The rollout in progress (local), or the InferenceService's traffic split (cluster), and the aliases."""
    from mlplatform import registry
    from mlplatform.rollout.backends import report_root
    from mlplatform.rollout.controller import ControlFile

    try:
        settings, _ = _rollout_settings(work_dir, target)
        registry.configure(settings)
        aliases = {
            a: (v.version if (v := registry.get_alias(settings.registered_model_name, a)) else None)
            for a in (registry.CHAMPION, registry.CHALLENGER, registry.PREVIOUS)
        }
        if settings.deploy_target == "cluster":
            from dataclasses import asdict

            from mlplatform.deploy.cluster import kubernetes_client
            from mlplatform.deploy.inferenceservice import get, predictor_traffic

            live = get(settings.registered_model_name, settings.deploy_namespace, kubernetes_client())
            status: dict[str, Any] = {"target": "cluster", **asdict(predictor_traffic(live))}
        else:
            status = ControlFile(report_root(settings) / "current.json").read() or {"state": "no rollout yet"}
    except (MlPlatformError, ValueError, RuntimeError) as exc:
        _fail(exc)
    print(json.dumps({"aliases": aliases, **status}, indent=2, default=str))


def _decide(action: str, version: str | None, record_only: bool, target: str | None, work_dir: Path) -> None:
    """Promote or roll back by hand: through the running local controller, or directly on a cluster."""
    import time

    from mlplatform import registry
    from mlplatform.deploy.artifact import resolve
    from mlplatform.rollout.backends import ClusterBackend, report_root
    from mlplatform.rollout.controller import ControlFile

    settings, canary = _rollout_settings(work_dir, target)
    name = settings.registered_model_name
    control = ControlFile(report_root(settings) / "current.json")
    running = control.read().get("state") in ("analysing", "waiting")
    if settings.deploy_target == "local" and running and not record_only:
        control.request(action)
        deadline = time.monotonic() + max(30.0, 3 * canary.analysis_interval_seconds)
        while time.monotonic() < deadline:
            state = control.read().get("state")
            if state in ("promoted", "rolled_back"):
                console.print(f"the running rollout is {state}: {control.read().get('detail')}")
                return
            time.sleep(0.5)
        raise MlPlatformError(f"the local rollout controller did not act on the {action} request within 30 s")
    champion = resolve(settings, registry.CHAMPION)
    target_version = registry.get_version(name, version) if version else resolve(settings, registry.CHALLENGER)
    if not record_only:
        if settings.deploy_target != "cluster":
            raise MlPlatformError(
                "no local rollout is running (its processes live in `mlplatform rollout start`); "
                "use --record-only to move the registry aliases only"
            )
        backend = ClusterBackend(settings, canary, champion, target_version)
        backend.promote() if action == "promote" else backend.rollback()
    moves = (
        registry.promote_champion(name, target_version.version)
        if action == "promote"
        else registry.retire_challenger(name, target_version.version)
    )
    registry.tag_version(
        name,
        target_version.version,
        {
            "rollout.outcome": "promoted" if action == "promote" else "rolled_back",
            "rollout.reason": f"{action} by hand",
        },
    )
    console.print(f"version {target_version.version}: {action} done; registry: {', '.join(moves) or 'unchanged'}")


RecordOnly = Annotated[
    bool, typer.Option("--record-only", help="Only move the registry aliases (the traffic is already decided).")
]
VersionOpt = Annotated[str | None, typer.Option("--version", help="Version concerned (default: the challenger).")]


@rollout_app.command("promote")
def rollout_promote(
    version: VersionOpt = None,
    record_only: RecordOnly = False,
    target: Target = None,
    work_dir: WorkDir = Path(".mlplatform"),
) -> None:
    """Promote now: the running rollout's canary (local), or the challenger on the cluster."""
    try:
        _decide("promote", version, record_only, target, work_dir)
    except (MlPlatformError, ValueError, RuntimeError) as exc:
        _fail(exc)


@rollout_app.command("rollback")
def rollout_rollback(
    version: VersionOpt = None,
    record_only: RecordOnly = False,
    target: Target = None,
    work_dir: WorkDir = Path(".mlplatform"),
) -> None:
    """Roll back now: all traffic to the champion; the challenger alias is removed."""
    try:
        _decide("rollback", version, record_only, target, work_dir)
    except (MlPlatformError, ValueError, RuntimeError) as exc:
        _fail(exc)


if __name__ == "__main__":
    app()
