"""Grafana dashboards are code: the committed JSON (and the chart's copies) are the current output of the builder."""

from __future__ import annotations

import json
import re

import pytest

from mlplatform.monitoring import dashboards, grafana

#: What issue 5 asks the dashboards to show, by file.
REQUIRED = {
    "serving-overview.json",
    "canary-comparison.json",
    "drift.json",
    "quality.json",
    "feature-store.json",
    "retraining-rollout.json",
}


@pytest.mark.parametrize("folder", dashboards.OUTPUT_DIRS, ids=lambda p: str(p.relative_to(dashboards.ROOT)))
def test_committed_dashboards_are_the_generated_ones(folder) -> None:
    expected = dashboards.render()
    committed = {p.name: p.read_text() for p in folder.glob("*.json")}
    assert committed == expected, f"{folder} is stale: run `python -m mlplatform.monitoring.dashboards`"


def test_every_required_dashboard_exists_with_unique_uids_and_panel_ids() -> None:
    rendered = {name: json.loads(text) for name, text in dashboards.render().items()}
    assert set(rendered) == REQUIRED
    assert len({d["uid"] for d in rendered.values()}) == len(rendered)
    for name, doc in rendered.items():
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids)), name
        assert all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in doc["panels"]), name
        assert [v["name"] for v in doc["templating"]["list"]] == ["datasource", "model_name"]
        for p in doc["panels"]:  # no panel overlaps the 24-column grid's edge
            assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, (name, p["title"])


def _serving_families() -> set[str]:
    """Metric family names the serving processes export (serving/metrics.py), sample suffixes included."""
    from prometheus_client import CollectorRegistry

    from serving.metrics import ServingMetrics

    registry = CollectorRegistry()
    ServingMetrics("m", "1", "stable", "predictor", registry=registry)
    names = {family.name for family in registry.collect()}
    return names | {f"{n}{suffix}" for n in names for suffix in ("_total", "_bucket", "_sum", "_count")}


def test_per_version_serving_panels_read_the_predictor_series() -> None:
    """On a cluster one transformer serves both predictor revisions (model_version="shared", role stable), so a
    serving query split by version or role must select component="predictor"; transformer series are totals."""
    families = _serving_families()
    per_version = re.compile(r"by \(([^)]*)\)")
    checked = 0
    for name, text in dashboards.render().items():
        for expr in grafana.expressions(json.loads(text)):
            if not set(re.findall(r"\b(mlplatform_[a-z0-9_]+)\b", expr)) & families:
                continue
            groupings = {label.strip() for group in per_version.findall(expr) for label in group.split(",")}
            if groupings & {"model_version", "role"}:
                checked += 1
                assert 'component="predictor"' in expr and "transformer" not in expr, (name, expr)
    assert checked >= 8  # the serving overview's and the canary comparison's per-version panels
