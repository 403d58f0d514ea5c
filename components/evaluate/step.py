"""Evaluate: test metrics of the model, the rule baseline and the champion on the same data; model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform import registry
from mlplatform.features.compute import MODEL_FEATURES, model_input
from mlplatform.settings import PlatformSettings
from mlplatform.training.evaluation import binary_metrics, evaluation_report, fit_rule_baseline
from mlplatform.training.importance import permutation_importance
from mlplatform.training.model import ModelConfig, load_model, predict_proba
from mlplatform.training.quality_gates import GateSettings, compare_slices, segment_disparity

REPORT_FILE = "evaluation.json"
MODEL_CARD_FILE = "model_card.md"


def champion_scores(model_name: str, x: np.ndarray) -> tuple[str, np.ndarray, float] | None:
    """The current champion's version, its scores on `x` and its operating threshold; None when there is no
    champion.

    MLflow must be configured (`registry.configure`).
    """

    champion = registry.get_alias(model_name, registry.CHAMPION)
    if champion is None:
        return None
    model, config = load_model(registry.download_version(champion))
    if list(config.feature_names) != list(MODEL_FEATURES):
        return None  # a champion on other features cannot be scored on this set
    return champion.version, predict_proba(model, x), config.threshold


def model_card(report: dict[str, Any], config: ModelConfig, split_info: dict[str, Any]) -> str:
    """A Markdown model card: data, features, metrics, intended use, limits."""
    m, b = report["model"], report["baseline"]
    champ = report.get("champion")
    lines = [
        "# Model card: fraud-detector",
        "",
        "## Intended use",
        "Scores card transactions for fraud risk in real time. A score at or above the operating "
        f"threshold ({config.threshold:.4f}) flags the transaction for review or step-up "
        "authentication. Not for automated account closure or credit decisions.",
        "",
        "## Data",
        f"- Training rows: {split_info['train_rows']}, validation rows: {split_info['validation_rows']}, "
        f"test rows: {m['count']} ({m['positives']} fraud)",
        f"- Test window starts {split_info['test_start']}; splits are by time, features are point-in-time (Feast).",
        "",
        "## Features",
        *[f"- `{f}`" for f in config.feature_names],
        "",
        "## Model",
        f"MLP {len(config.feature_names)} -> {' -> '.join(map(str, config.hidden_units))} -> 1, "
        "signed-log + standardised inputs, weighted BCE, AdamW, early stopping on validation loss.",
        "",
        "## Metrics (test window)",
        "| | ROC-AUC | PR-AUC | precision | recall | F1 | Brier | ECE |",
        "|---|---|---|---|---|---|---|---|",
        _row("model", m),
        _row(f"rule baseline (`{b['rule']}`)", b),
    ]
    if champ:
        lines.append(_row(f"champion v{champ['version']}", champ))
    lines += [
        "",
        "### Slices",
        "| slice | count | fraud | PR-AUC | recall |",
        "|---|---|---|---|---|",
    ]
    for name, s in report["slices"].items():
        lines.append(f"| {name} | {s['count']} | {s['positives']} | {s['pr_auc']:.3f} | {s['recall']:.3f} |")
    lines += _gate_lines(report)
    lines += [
        "",
        "## Limits",
        "- Trained on generated data; real traffic needs recalibration of the threshold.",
        "- Customers with no history get neutral features; their scores rely on merchant and amount.",
        "- Fraud patterns drift: monitor feature and score drift and retrain on alerts.",
    ]
    return "\n".join(lines) + "\n"


def _gate_lines(report: dict[str, Any]) -> list[str]:
    """Model card sections: feature importance, the slice gate against the champion, recall and FPR per segment."""
    lines = [
        "",
        "## Feature importance (test window)",
        "PR-AUC lost when the feature is shuffled (mean of the shuffles, their standard deviation).",
        "",
        "| feature | PR-AUC drop | std | earns its keep |",
        "|---|---|---|---|",
    ]
    for name, v in report["importance"].items():
        keep = "yes" if v["measurable"] else "**no: adds nothing measurable**"
        lines.append(f"| `{name}` | {v['pr_auc_drop']:.4f} | {v['std']:.4f} | {keep} |")
    gate = report.get("slice_gate")
    if gate:
        lines += [
            "",
            f"### Slices against the champion (tolerance: allowed regression + {gate['z']:.2f} standard errors)",
            "| slice | metric | model | champion | tolerance | frauds | regressed |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in gate["compared"]:
            lines.append(
                f"| {r['slice']} | {r['metric']} | {r['candidate']:.3f} | {r['champion']:.3f} | "
                f"{r['tolerance']:.3f} | {r['positives']} | {'**yes**' if r['regressed'] else 'no'} |"
            )
        if gate["not_gated"]:
            lines.append(f"\nNot gated (too few frauds): {', '.join(gate['not_gated'])}.")
    inclusion = report["inclusion"]
    lines += [
        "",
        "### Customer segments (synthetic card type, not a model input)",
        "| segment | rows | frauds | recall | false-positive rate |",
        "|---|---|---|---|---|",
    ]
    for name, v in inclusion["segments"].items():
        lines.append(
            f"| {name} | {v['count']} | {v['positives']} | {v['recall']:.3f} | {v['false_positive_rate']:.4f} |"
        )
    for key, label in (("recall_gap", "recall"), ("false_positive_rate_gap", "false-positive rate")):
        gap = inclusion.get(key)
        if gap:
            verdict = "beyond the bound" if gap["exceeded"] else "within it"
            lines.append(
                f"\nLargest {label} gap: {gap['gap']:.4f} ({gap['highest']} vs {gap['lowest']}, standard error "
                f"{gap['standard_error']:.4f}, bound {gap['bound']}): {verdict}."
            )
    return lines


def _row(name: str, m: dict[str, Any]) -> str:
    return (
        f"| {name} | {m['roc_auc']:.4f} | {m['pr_auc']:.4f} | {m['precision']:.4f} | "
        f"{m['recall']:.4f} | {m['f1']:.4f} | {m['brier']:.4f} | {m['ece']:.4f} |"
    )


def run_evaluate(
    model_dir: Path,
    validation_path: Path,
    test_path: Path,
    settings: PlatformSettings,
    mlflow_run_id: str,
    out_dir: Path,
) -> dict[str, Any]:
    """Score the test window with the model, the rule baseline (chosen on validation) and the champion.

    Writes `evaluation.json` and `model_card.md` into `out_dir` and logs both, and the test
    metrics, to the training run in MLflow.
    """
    import mlflow

    model, config = load_model(model_dir)
    val, test = pd.read_parquet(validation_path), pd.read_parquet(test_path)
    y_test = test["is_fraud"].to_numpy(np.int64)
    x_test = model_input(test)
    scores = predict_proba(model, x_test)
    baseline = fit_rule_baseline(val, val["is_fraud"].to_numpy(np.int64), MODEL_FEATURES)
    report = evaluation_report(test, y_test, scores, config.threshold, baseline)
    gate = GateSettings.of(settings)
    both_classes = 0 < int(y_test.sum()) < len(y_test)
    report["importance"] = permutation_importance(model, x_test, y_test, config.feature_names) if both_classes else {}
    report["inclusion"] = segment_disparity(test, y_test, scores, config.threshold, gate)
    registry.configure(settings)
    champ = champion_scores(settings.registered_model_name, x_test)
    if champ is not None:
        version, champ_scores, champ_threshold = champ
        report["champion"] = {
            "version": version,
            "threshold": champ_threshold,
            **binary_metrics(y_test, champ_scores, champ_threshold),
        }
        report["slice_gate"] = compare_slices(
            test, y_test, (scores, config.threshold), (champ_scores, champ_threshold), gate
        )
    split_info = {
        "train_rows": config.metadata.get("train_rows", "n/a"),
        "validation_rows": len(val),
        "test_start": str(test["event_timestamp"].min()),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    (out_dir / MODEL_CARD_FILE).write_text(model_card(report, config, split_info))

    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in report["model"].items() if isinstance(v, float)})
        mlflow.log_metrics({f"baseline_{k}": v for k, v in report["baseline"].items() if isinstance(v, float)})
        if "champion" in report:
            mlflow.log_metric("champion_test_pr_auc", report["champion"]["pr_auc"])
        mlflow.log_metrics({f"importance_{k}": v["pr_auc_drop"] for k, v in report["importance"].items()})
        for key, gap in report["inclusion"].items():
            if key.endswith("_gap") and gap:
                mlflow.log_metric(f"segment_{key}", gap["gap"])
        mlflow.log_artifact(str(out_dir / REPORT_FILE), artifact_path="evaluation")
        mlflow.log_artifact(str(out_dir / MODEL_CARD_FILE), artifact_path="evaluation")
    return report
