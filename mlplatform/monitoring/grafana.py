"""Grafana dashboard JSON from Python: panels of PromQL targets laid out on Grafana's 24-column grid, the
dashboard frame (schema 39, a Prometheus datasource variable and a model_name variable) and the PromQL helpers the
dashboards share. mlplatform/monitoring/dashboards.py defines the platform's dashboards with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


def rate_sum(metric: str, matchers: str, by: str | None = None) -> str:
    """`sum by (by) (rate(metric{matchers}[$__rate_interval]))`; a plain sum when `by` is None."""
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{matchers}}}[{RATE}]))"


@dataclass
class Panel:
    """One panel: a title, PromQL targets (expr, legend) and how to draw them."""

    title: str
    targets: list[tuple[str, str]]
    kind: str = "timeseries"
    unit: str = "short"
    description: str = ""
    width: int = 12
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)


def _panel(p: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "options": p.options,
        "targets": [
            {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
            for i, (expr, legend) in enumerate(p.targets)
        ],
    }


def dashboard(uid: str, title: str, description: str, panels: list[Panel]) -> dict[str, Any]:
    """A Grafana dashboard (schema 39) with a Prometheus datasource variable and a model_name variable."""
    laid_out, x, y, row_height = [], 0, 0, 0
    for i, p in enumerate(panels, start=1):
        if x + p.width > 24:
            x, y, row_height = 0, y + row_height, 0
        laid_out.append(_panel(p, i, x, y))
        x, row_height = x + p.width, max(row_height, p.height)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["mlplatform"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
                {
                    "name": "model_name",
                    "type": "query",
                    "label": "model",
                    "datasource": DATASOURCE,
                    "query": {"query": "label_values(mlplatform_model_info, model_name)", "refId": "model_name"},
                    "includeAll": True,
                    "allValue": ".+",
                    "multi": False,
                    "refresh": 2,
                },
            ]
        },
        "panels": laid_out,
    }


def quantiles(metric: str, matchers: str, by: str | None) -> list[tuple[str, str]]:
    """p50/p95/p99 of a histogram, one series per `by` group (one series in all when `by` is None)."""
    grouping = f"le, {by}" if by else "le"
    legend = " ".join("{{" + b.strip() + "}}" for b in by.split(",")) if by else ""
    return [
        (
            f"histogram_quantile({q}, sum by ({grouping}) (rate({metric}_bucket{{{matchers}}}[{RATE}])))",
            f"p{int(q * 100)} {legend}".strip(),
        )
        for q in (0.5, 0.95, 0.99)
    ]


def expressions(doc: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard (panel targets)."""
    return [t["expr"] for p in doc["panels"] for t in p["targets"]]
