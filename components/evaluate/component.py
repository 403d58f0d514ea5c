"""KFP component of the evaluate step: a thin wrapper around components.evaluate.step."""

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from mlplatform.settings import DEFAULT_COMPONENT_IMAGE


@dsl.component(base_image=DEFAULT_COMPONENT_IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    validation: Input[Dataset],
    test: Input[Dataset],
    mlflow_run_id: str,
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    card: Output[Markdown],
) -> str:
    """Evaluate the model against the rule baseline and the champion on the test window.

    Args:
        model: The trained model directory.
        validation: Validation rows (to choose the rule baseline).
        test: Test rows.
        mlflow_run_id: The training run to log the evaluation to.
        metrics: Test metrics for the Kubeflow UI.
        classification: ROC curve and confusion matrix for the Kubeflow UI.
        card: The model card (Markdown).

    Returns:
        The evaluation report (JSON).
    """
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from components.evaluate.step import MODEL_CARD_FILE, run_evaluate
    from mlplatform.settings import PlatformSettings

    out = Path(tempfile.mkdtemp(prefix="evaluate-"))
    report = run_evaluate(
        Path(model.path),
        Path(validation.path),
        Path(test.path),
        PlatformSettings(),
        mlflow_run_id,
        out,
    )
    for key, value in report["model"].items():
        metrics.log_metric(f"test_{key}", float(value))
    metrics.log_metric("baseline_pr_auc", float(report["baseline"]["pr_auc"]))
    if "champion" in report:
        metrics.log_metric("champion_pr_auc", float(report["champion"]["pr_auc"]))
    roc = report["roc"]
    classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    classification.log_confusion_matrix(["legit", "fraud"], report["confusion_matrix"])
    shutil.copyfile(out / MODEL_CARD_FILE, card.path)
    return json.dumps({k: v for k, v in report.items() if k not in ("roc", "slices")})
