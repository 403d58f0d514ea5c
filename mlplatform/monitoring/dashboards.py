"""Grafana dashboards as code: `python -m mlplatform.monitoring.dashboards` writes monitoring/dashboards/.

The JSON files are committed (the chart's ConfigMaps embed copies under helm/mlplatform/files/dashboards/);
tests/unit/test_dashboards.py checks that both are the current output of this module, and
tests/integration/test_dashboard_queries.py that every query parses on a real Prometheus and names metrics
that our processes really export.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mlplatform.metric_names import (
    ANALYSED_COMPONENT,
    FALLBACKS,
    FEATURE_LOOKUP_SECONDS,
    LATENCY_STAGE,
    PREDICTION_LOG_ERRORS,
    PREDICTION_LOG_RECORDS,
    REQUESTS,
    SCORE_BUCKET,
    SERVER_ERROR_OUTCOMES,
    STAGE_SECONDS,
)
from mlplatform.monitoring.grafana import RATE, Panel, dashboard, quantiles, rate_sum
from mlplatform.settings import PROJECT_ROOT

ROOT = PROJECT_ROOT
OUTPUT_DIRS = (ROOT / "monitoring" / "dashboards", ROOT / "helm" / "mlplatform" / "files" / "dashboards")
#: Label matchers every serving panel applies (dashboard variables).
MODEL = 'model_name=~"$model_name"'
CLIENT = f'{MODEL},component="transformer"'
#: The component whose series carry one model version each in both layouts: with the transformer in pods of its
#: own, one transformer revision (model_version="shared", role="stable") fronts every predictor revision, so every
#: per-version panel reads the predictor's series; the transformer's are client-facing totals.
VERSIONED = f'{MODEL},component="{ANALYSED_COMPONENT}"'
_SERVER_ERROR_RE = "|".join(SERVER_ERROR_OUTCOMES)
SERVER_ERRORS = f'{CLIENT},outcome=~"{_SERVER_ERROR_RE}"'
VERSIONED_ERRORS = f'{VERSIONED},outcome=~"{_SERVER_ERROR_RE}"'
BELOW_HALF, ALL_SCORES = ',le="0.5"', ',le="+Inf"'


def serving_overview() -> dict[str, Any]:
    by = "model_version, role"
    return dashboard(
        "mlplatform-serving",
        "mlplatform / serving overview",
        "Client-facing totals from the transformer; traffic, errors and model latency of each served version "
        "and role from the predictor (on a cluster one transformer serves every predictor revision).",
        [
            Panel(
                "Requests per second per version (predictor)",
                [(rate_sum(REQUESTS, VERSIONED, by), "v{{model_version}} {{role}}")],
                unit="reqps",
            ),
            Panel(
                "Server error ratio per version (predictor: error)",
                [
                    (
                        f"{rate_sum(REQUESTS, VERSIONED_ERRORS, by)} / {rate_sum(REQUESTS, VERSIONED, by)}",
                        "v{{model_version}} {{role}}",
                    )
                ],
                unit="percentunit",
            ),
            Panel(
                "Model latency per version (predictor, p50/p95/p99)",
                quantiles(STAGE_SECONDS, f'{VERSIONED},stage="{LATENCY_STAGE}"', by),
                unit="s",
            ),
            Panel(
                "End-to-end latency (transformer, every version)",
                quantiles(STAGE_SECONDS, f'{CLIENT},stage="total"', None),
                unit="s",
            ),
            Panel(
                "Client requests by outcome (transformer)",
                [(rate_sum(REQUESTS, CLIENT, "outcome"), "{{outcome}}")],
                unit="reqps",
            ),
            Panel(
                "Client server error ratio (transformer: error, unavailable)",
                [(f"{rate_sum(REQUESTS, SERVER_ERRORS)} / {rate_sum(REQUESTS, CLIENT)}", "server errors")],
                unit="percentunit",
            ),
            Panel(
                "Latency by stage (p99)",
                [
                    (
                        "histogram_quantile(0.99, sum by (le, component, stage) "
                        f"(rate({STAGE_SECONDS}_bucket{{{MODEL}}}[{RATE}])))",
                        "{{component}} {{stage}}",
                    )
                ],
                unit="s",
            ),
            Panel(
                "Fallback scores by reason",
                [
                    (
                        rate_sum(FALLBACKS, MODEL, "reason, component"),
                        "{{component}} {{reason}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Prediction log: records written and write errors (transformer)",
                [
                    (rate_sum(PREDICTION_LOG_RECORDS, MODEL), "records"),
                    (rate_sum(PREDICTION_LOG_ERRORS, MODEL), "errors"),
                ],
                unit="ops",
            ),
            Panel(
                "Served versions (predictor)",
                [
                    (
                        f"max by (model_version, role, mlflow_run_id) (mlplatform_model_info{{{VERSIONED}}})",
                        "v{{model_version}} {{role}} run {{mlflow_run_id}}",
                    )
                ],
                kind="table",
            ),
        ],
    )


def canary_comparison() -> dict[str, Any]:
    role = "role"
    return dashboard(
        "mlplatform-canary",
        "mlplatform / canary comparison",
        "Stable against canary during a rollout, from the predictor's series (what the canary analysis reads): "
        "traffic share, errors, model latency and scores.",
        [
            Panel(
                "Traffic share (rollout controller)",
                [
                    (
                        f"max by (model_version, role) (mlplatform_rollout_traffic_percent{{{MODEL}}})",
                        "v{{model_version}} {{role}}",
                    )
                ],
                unit="percent",
            ),
            Panel(
                "Observed request share (predictor)",
                [
                    (
                        f"{rate_sum(REQUESTS, VERSIONED, role)} / ignoring ({role}) group_left "
                        f"{rate_sum(REQUESTS, VERSIONED)}",
                        "{{role}}",
                    )
                ],
                unit="percentunit",
            ),
            Panel(
                "Server error ratio by role (predictor)",
                [(f"{rate_sum(REQUESTS, VERSIONED_ERRORS, role)} / {rate_sum(REQUESTS, VERSIONED, role)}", "{{role}}")],
                unit="percentunit",
            ),
            Panel(
                "p99 model latency by role (predictor)",
                quantiles(STAGE_SECONDS, f'{VERSIONED},stage="{LATENCY_STAGE}"', role)[2:],
                unit="s",
            ),
            Panel(
                "Mean score by role (predictor)",
                [
                    (
                        f"{rate_sum('mlplatform_prediction_score_sum', VERSIONED, role)}"
                        f" / {rate_sum('mlplatform_prediction_score_count', VERSIONED, role)}",
                        "{{role}}",
                    )
                ],
            ),
            Panel(
                "Share of scores above 0.5 by role (predictor)",
                [
                    (
                        f"1 - {rate_sum(SCORE_BUCKET, VERSIONED + BELOW_HALF, role)}"
                        f" / {rate_sum(SCORE_BUCKET, VERSIONED + ALL_SCORES, role)}",
                        "{{role}}",
                    )
                ],
                unit="percentunit",
            ),
            Panel(
                "Rollout state",
                [
                    (
                        f"max by (model_version, state) (mlplatform_rollout_state{{{MODEL}}}) == 1",
                        "v{{model_version}} {{state}}",
                    )
                ],
                kind="table",
            ),
        ],
    )


def drift() -> dict[str, Any]:
    return dashboard(
        "mlplatform-drift",
        "mlplatform / drift per feature",
        "The monitor's comparison of live windows with each version's training reference (alert: PSI >= 0.25).",
        [
            Panel(
                "PSI per feature",
                [
                    (
                        f"max by (model_version, feature) (mlplatform_drift_psi{{{MODEL}}})",
                        "v{{model_version}} {{feature}}",
                    )
                ],
                width=24,
            ),
            Panel(
                "KS per continuous feature",
                [
                    (
                        f"max by (model_version, feature) (mlplatform_drift_ks{{{MODEL}}})",
                        "v{{model_version}} {{feature}}",
                    )
                ],
            ),
            Panel(
                "Score drift (PSI, KS)",
                [
                    (f"max by (model_version) (mlplatform_score_psi{{{MODEL}}})", "PSI v{{model_version}}"),
                    (f"max by (model_version) (mlplatform_score_ks{{{MODEL}}})", "KS v{{model_version}}"),
                ],
            ),
            Panel(
                "Missing or non-finite rate per feature",
                [
                    (
                        f"max by (model_version, feature) (mlplatform_feature_missing_rate{{{MODEL}}})",
                        "v{{model_version}} {{feature}}",
                    )
                ],
                unit="percentunit",
            ),
            Panel(
                "Training-serving skew (standardized mean difference)",
                [
                    (
                        f"max by (model_version, feature) (mlplatform_feature_skew{{{MODEL}}})",
                        "v{{model_version}} {{feature}}",
                    )
                ],
            ),
            Panel(
                "Predictions in the drift window",
                [(f"max by (model_version) (mlplatform_monitor_window_predictions{{{MODEL}}})", "v{{model_version}}")],
            ),
            Panel(
                "Monitor runs",
                [
                    ("sum by (outcome) (increase(mlplatform_monitor_runs_total[1h]))", "{{outcome}} / h"),
                    ("time() - max(mlplatform_monitor_last_success_timestamp_seconds)", "seconds since last success"),
                ],
            ),
        ],
    )


def quality() -> dict[str, Any]:
    return dashboard(
        "mlplatform-quality",
        "mlplatform / quality over time",
        "Precision, recall and PR-AUC on predictions whose (delayed) labels arrived; model age.",
        [
            Panel(
                "PR-AUC, precision, recall",
                [
                    (f"max by (model_version) (mlplatform_quality_pr_auc{{{MODEL}}})", "PR-AUC v{{model_version}}"),
                    (
                        f"max by (model_version) (mlplatform_quality_precision{{{MODEL}}})",
                        "precision v{{model_version}}",
                    ),
                    (f"max by (model_version) (mlplatform_quality_recall{{{MODEL}}})", "recall v{{model_version}}"),
                ],
                unit="percentunit",
                width=24,
            ),
            Panel(
                "Labelled predictions in the quality window",
                [
                    (
                        f"max by (model_version) (mlplatform_quality_labelled_predictions{{{MODEL}}})",
                        "v{{model_version}}",
                    )
                ],
            ),
            Panel(
                "Model age",
                [(f"max by (model_version) (mlplatform_model_age_seconds{{{MODEL}}})", "v{{model_version}}")],
                unit="s",
            ),
        ],
    )


def feature_store() -> dict[str, Any]:
    return dashboard(
        "mlplatform-feature-store",
        "mlplatform / feature store",
        "Online feature lookups of the transformer against the Feast online store (Redis), every version together.",
        [
            Panel(
                "Lookup latency",
                quantiles(FEATURE_LOOKUP_SECONDS, MODEL, None),
                unit="s",
                width=24,
            ),
            Panel(
                "Lookup errors by reason",
                [(f"sum by (reason) (rate(mlplatform_feature_store_errors_total{{{MODEL}}}[{RATE}]))", "{{reason}}")],
                unit="ops",
            ),
            Panel(
                "Entities without features (defaults used)",
                [(f"sum by (entity) (rate(mlplatform_feature_misses_total{{{MODEL}}}[{RATE}]))", "{{entity}}")],
                unit="ops",
            ),
        ],
    )


def retraining() -> dict[str, Any]:
    return dashboard(
        "mlplatform-retraining",
        "mlplatform / retraining and rollout events",
        "The feedback loop: alerts received by the webhook, retraining runs, rollouts and rollbacks.",
        [
            Panel(
                "Alerts at the webhook by action",
                [
                    (
                        "sum by (alertname, action) (increase(mlplatform_webhook_alerts_total[1h]))",
                        "{{alertname}} {{action}}",
                    )
                ],
            ),
            Panel(
                "Retraining runs by outcome",
                [
                    (
                        "sum by (trigger, outcome) (increase(mlplatform_retraining_runs_total[1h]))",
                        "{{trigger}} {{outcome}}",
                    )
                ],
            ),
            Panel(
                "Retraining runs in progress and last trigger",
                [
                    ("max(mlplatform_retraining_active_runs)", "active runs"),
                    (
                        "time() - max(mlplatform_retraining_last_trigger_timestamp_seconds) > 0",
                        "seconds since last trigger",
                    ),
                ],
            ),
            Panel(
                "Rollouts by outcome",
                [(f"sum by (outcome) (increase(mlplatform_rollouts_total{{{MODEL}}}[1h]))", "{{outcome}}")],
            ),
            Panel(
                "Canary traffic share",
                [
                    (
                        f"max by (model_version, role) (mlplatform_rollout_traffic_percent{{{MODEL}}})",
                        "v{{model_version}} {{role}}",
                    )
                ],
                unit="percent",
            ),
            Panel(
                "Canary step decisions",
                [
                    (
                        f"sum by (decision) (increase(mlplatform_rollout_step_decisions_total{{{MODEL}}}[1h]))",
                        "{{decision}}",
                    )
                ],
            ),
            Panel(
                "Time to restore of the last rollback",
                [(f"max by (model_name) (mlplatform_rollout_last_rollback_seconds{{{MODEL}}})", "{{model_name}}")],
                kind="stat",
                unit="s",
            ),
        ],
    )


DASHBOARDS = {
    "serving-overview": serving_overview,
    "canary-comparison": canary_comparison,
    "drift": drift,
    "quality": quality,
    "feature-store": feature_store,
    "retraining-rollout": retraining,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard (stable formatting: sorted keys, two-space indent)."""
    return {f"{name}.json": json.dumps(build(), indent=2, sort_keys=True) + "\n" for name, build in DASHBOARDS.items()}


def write(dirs: tuple[Path, ...] = OUTPUT_DIRS) -> list[Path]:
    """Write every dashboard into each folder; returns the files written."""
    written = []
    for out in dirs:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in render().items():
            (out / name).write_text(text)
            written.append(out / name)
    return written


if __name__ == "__main__":
    for path in write():
        print(path.relative_to(ROOT), file=sys.stderr)
