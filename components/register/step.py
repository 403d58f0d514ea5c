"""Register: the promotion gate, then an MLflow model version with lineage tags and aliases."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from components.ingest.step import IngestResult
from mlplatform import registry
from mlplatform.errors import PromotionRejected
from mlplatform.features.compute import MODEL_FEATURES
from mlplatform.features.store import FEATURE_SERVICE
from mlplatform.params import trigger_tags
from mlplatform.settings import PlatformSettings
from mlplatform.training.quality_gates import quality_gate_reasons


@dataclass(frozen=True)
class RegisterResult:
    """The gate's outcome and, when registered, the version."""

    registered: bool
    model_name: str
    version: str = ""
    aliases: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    test_pr_auc: float = float("nan")
    baseline_pr_auc: float = float("nan")
    champion_pr_auc: float | None = None
    rows: int = 0
    fraud_rows: int = 0


def lineage_tags(
    settings: PlatformSettings,
    ingest: IngestResult,
    feature_versions: dict[str, str],
    pipeline_run_id: str,
    report: dict[str, Any],
) -> dict[str, str]:
    """Tags that tie a model version to its data, features, code, run and image."""
    tags = {
        "data_hash": ingest.data_hash,
        "data_rows": str(ingest.rows),
        "data_window": f"{ingest.start}/{ingest.end}",
        "feature_service": FEATURE_SERVICE,
        "features": ",".join(MODEL_FEATURES),
        "git_commit": settings.git_commit or "unknown",
        "pipeline_run_id": pipeline_run_id or "unknown",
        "component_image": settings.component_image,
        "test_pr_auc": f"{report['model']['pr_auc']:.6f}",
        "test_roc_auc": f"{report['model']['roc_auc']:.6f}",
        "baseline_pr_auc": f"{report['baseline']['pr_auc']:.6f}",
        "operating_threshold": f"{report['threshold']:.6f}",
    }
    tags.update({f"feature_version.{name}": v for name, v in feature_versions.items()})
    return tags


def run_register(
    mlflow_run_id: str,
    report: dict[str, Any],
    ingest: IngestResult,
    feature_versions: dict[str, str],
    pipeline_run_id: str,
    settings: PlatformSettings,
    trigger: str = "manual",
) -> RegisterResult:
    """Gate the model on its evaluation, then register it (alias `challenger`; the first is `champion`).

    The training run and the model version are tagged with why the pipeline ran (`trigger_tags(trigger)`).
    """
    import mlflow

    registry.configure(settings)
    champion = report.get("champion")
    champion_pr_auc = champion["pr_auc"] if champion else None
    reasons = registry.gate_reasons(report["model"], report["baseline"]["pr_auc"], champion_pr_auc, settings)
    reasons += quality_gate_reasons(report)
    common = {
        "model_name": settings.registered_model_name,
        "test_pr_auc": report["model"]["pr_auc"],
        "baseline_pr_auc": report["baseline"]["pr_auc"],
        "champion_pr_auc": champion_pr_auc,
        "rows": ingest.rows,
        "fraud_rows": ingest.fraud_rows,
    }
    run = mlflow.get_run(mlflow_run_id)
    source = f"{run.info.artifact_uri}/model"
    tags = lineage_tags(settings, ingest, feature_versions, pipeline_run_id, report)
    tags.update(trigger_tags(trigger))
    client = mlflow.MlflowClient()
    for key, value in trigger_tags(trigger).items():
        client.set_tag(mlflow_run_id, key, value)
    try:
        version = registry.register_version(settings.registered_model_name, source, mlflow_run_id, tags, reasons)
    except PromotionRejected as rejected:
        client.set_tag(mlflow_run_id, "gate", "rejected")
        client.set_tag(mlflow_run_id, "gate_reasons", "; ".join(rejected.reasons))
        return RegisterResult(registered=False, reasons=rejected.reasons, **common)
    client.set_tag(mlflow_run_id, "gate", "passed")
    client.set_tag(mlflow_run_id, "registered_version", version.version)
    return RegisterResult(registered=True, version=version.version, aliases=version.aliases, **common)
