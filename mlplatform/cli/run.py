"""`mlplatform run`: the training pipeline locally, its summary, then the champion served with a few predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

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
    WorkDir,
    console,
    fail,
    guarded,
    pipeline_params,
)
from mlplatform.errors import MlPlatformError
from mlplatform.local.serving import serve_local
from mlplatform.local.traffic import demo_transactions
from mlplatform.orchestration.runner import run_local
from mlplatform.params import DEFAULTS, PipelineParams
from mlplatform.rollout.analysis import CheckStatus
from mlplatform.rollout.backends import report_root
from mlplatform.rollout.report import Outcome, RolloutReport, StepRecord
from mlplatform.settings import PlatformSettings, load_settings


@guarded
def run(
    work_dir: WorkDir = None,
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
    serve: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve the champion afterwards and show a few predictions.")
    ] = True,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            help="Stream every step's full output to the screen (by default it goes to <work-dir>/logs and "
            "the screen gets one line per step).",
        ),
    ] = False,
) -> None:
    """Run the training pipeline locally (kfp.local), then serve the champion and show real predictions."""

    options = dict(locals())
    params = pipeline_params(options)
    settings = load_settings(PlatformSettings, work_dir=work_dir)
    console.rule("[bold]mlplatform: local training pipeline (kfp.local)")
    console.print(f"parameters: {params.model_dump() if verbose else _changed_params(params)}", highlight=False)
    result = run_local(params, settings, progress=not verbose)
    print_summary(result.summary, result.settings, result.pipeline_root)
    if not result.summary["registered"]:
        raise typer.Exit(code=1)
    print_deployment(result.summary.get("deployment") or {}, result.settings)
    if serve:
        _demo_serving(result.settings)


def _demo_serving(settings: PlatformSettings) -> None:
    """Serve the champion locally, score a few transactions through the endpoint, print a curl example."""
    import httpx

    console.rule("[bold]serving the champion locally (KServe transformer + predictor, Feast online store)")
    try:
        deployed, service = serve_local(settings, "champion")
    except MlPlatformError as exc:
        fail(f"could not serve the champion: {exc}")
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


def _changed_params(params: PipelineParams) -> str:
    """The parameters that differ from the pipeline's defaults, `name=value` each."""
    changed = {k: v for k, v in params.model_dump().items() if getattr(DEFAULTS, k) != v}
    return " ".join(f"{k}={v}" for k, v in changed.items()) + " (others default)" if changed else "defaults"


def print_deployment(deployment: dict[str, Any], settings: PlatformSettings | None = None) -> None:
    """What the deploy-canary + analyse step did; for a rollout its outcome and one row per traffic step.

    Args:
        settings: Where the full rollout report is (its path is printed); no path when None.
    """
    if not deployment:
        return
    console.rule(f"[bold]deploy canary + analyse: {deployment.get('outcome') or deployment.get('action')}")
    report = deployment.get("report") or {}
    if not report:
        console.print(deployment.get("reason", ""), highlight=False)
        return
    steps = [StepRecord(**step) for step in report.pop("steps", [])]
    rollout = RolloutReport(**report, steps=steps)
    headline = rollout.to_markdown().splitlines()[0].lstrip("# ")
    console.print(f"[bold]{headline}[/]: {rollout.reason}", highlight=False)
    if rollout.outcome == Outcome.ROLLED_BACK and rollout.restore_seconds is not None:
        console.print(
            f"time to detect {rollout.time_to_detect_seconds:.2f} s, rollback {rollout.rollback_seconds:.3f} s, "
            f"time to restore {rollout.restore_seconds:.2f} s",
            highlight=False,
        )
    table = Table(show_edge=False)
    for col in ("traffic step", "decision", "time", "requests canary/stable", "failed checks"):
        table.add_column(col)
    for step in rollout.steps:
        requests = "/".join(f"{side['requests']:.0f}" if side else "-" for side in (step.canary, step.stable))
        failed = [c["name"] for c in step.checks if c["status"] == CheckStatus.FAILED]
        table.add_row(
            f"Step {step.percent} %",
            step.decision,
            f"{step.duration_seconds:.1f} s",
            requests,
            ", ".join(failed) or "-",
        )
    console.print(table)
    if settings is not None:
        console.print(f"full report: {report_root(settings) / rollout.rollout_id / 'report.md'}", highlight=False)


def print_summary(summary: dict[str, Any], settings: PlatformSettings, pipeline_root: Path) -> None:
    """The end-of-run summary: data, metrics vs baseline, the registered version, where things are."""
    table = Table(title="Training run summary", show_header=False, show_edge=False)
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
