"""Drift reports for people: a rich table in the terminal, Markdown + PNG plots per window on disk."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from mlplatform.monitoring.drift import (
    KS_ALERT,
    PSI_ALERT,
    PSI_WARN,
    SKEW_ALERT,
    MonitorResult,
    VersionReport,
    drift_status,
)

REPORT_FILE = "report.md"
JSON_FILE = "report.json"
#: Features with the highest PSI whose reference-vs-live bins are plotted (beside the score).
MAX_FEATURE_PANELS = 8


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def window_folder_name(result: MonitorResult) -> str:
    """The folder of a window's report: its end time, e.g. `20260101T120000Z`."""
    return datetime.fromtimestamp(result.window.end_unix_s, UTC).strftime("%Y%m%dT%H%M%SZ")


def _slug(v: VersionReport) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{v.model_name}-v{v.model_version}")


def summary_table(result: MonitorResult) -> Table:
    """One row per model version: predictions, worst feature drift, score drift, quality, age."""
    table = Table(title=f"Monitor: window {result.window.label()}")
    for col in (
        "version",
        "predictions",
        "status",
        "max feature PSI",
        "score PSI",
        "score KS",
        "max |skew|",
        "labelled",
        "precision",
        "recall",
        "PR-AUC",
        "model age",
    ):
        table.add_column(col, justify="left" if col in ("version", "status") else "right")
    for v in result.versions:
        worst = max(v.features, key=lambda f: f.psi if math.isfinite(f.psi) else -1.0, default=None)
        skews = [abs(f.skew) for f in v.features if not math.isnan(f.skew)]
        q = v.quality
        table.add_row(
            f"{v.model_name} v{v.model_version}",
            str(v.predictions),
            _status_markup(v),
            f"{_fmt(worst.psi)} ({worst.feature})" if worst else "-",
            _fmt(v.score_psi),
            _fmt(v.score_ks),
            _fmt(max(skews)) if skews else "-",
            str(q.labelled) if q else "-",
            _fmt(q.precision) if q else "-",
            _fmt(q.recall) if q else "-",
            _fmt(q.pr_auc) if q else "-",
            _age(v.model_age_seconds),
        )
    return table


def feature_table(v: VersionReport) -> Table:
    """Per-feature drift of one version."""
    table = Table(title=f"{v.model_name} v{v.model_version}: features")
    for col in ("feature", "PSI", "KS", "missing", "skew", "train mean", "live mean", "status"):
        table.add_column(col, justify="left" if col in ("feature", "status") else "right")
    for f in v.features:
        table.add_row(
            f.feature,
            _fmt(f.psi),
            _fmt(f.ks),
            _pct(f.missing_rate),
            _fmt(f.skew, 2),
            _fmt(f.reference_mean, 4),
            _fmt(f.live_mean, 4),
            {"drift": "[red]drift[/]", "watch": "[yellow]watch[/]"}.get(f.status, "ok"),
        )
    return table


def _status(v: VersionReport) -> str:
    if v.error:
        return f"error: {v.error}"
    if v.skipped:
        return f"skipped: {v.skipped}"
    statuses = {f.status for f in v.features} | {drift_status(v.score_psi, v.score_ks)}
    return "drift" if "drift" in statuses else "watch" if "watch" in statuses else "ok"


def _status_markup(v: VersionReport) -> str:
    s = _status(v)
    color = {"drift": "red", "watch": "yellow", "ok": "green"}.get(s, "magenta")
    return f"[{color}]{s.split(':')[0]}[/]"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 86_400:.1f} d" if seconds >= 86_400 else f"{seconds / 3600:.1f} h"


def _plots(v: VersionReport, folder: Path) -> list[str]:
    """PSI per feature; reference-vs-live bins of the score and the most drifted features; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slug = _slug(v)
    names = []
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(v.features) + 1.5))
    values = [f.psi if math.isfinite(f.psi) else 0.0 for f in v.features]
    colors = [{"drift": "tab:red", "watch": "tab:orange"}.get(drift_status(p), "tab:green") for p in values]
    ax.barh([f.feature for f in v.features], values, color=colors)
    ax.axvline(PSI_WARN, color="tab:orange", linestyle="--", linewidth=1, label=f"watch {PSI_WARN}")
    ax.axvline(PSI_ALERT, color="tab:red", linestyle="--", linewidth=1, label=f"drift {PSI_ALERT}")
    ax.invert_yaxis()
    ax.set_xlabel("PSI (live window vs training reference)")
    ax.set_title(f"{v.model_name} v{v.model_version}: feature drift")
    ax.legend(loc="lower right")
    fig.tight_layout()
    names.append(f"{slug}-psi.png")
    fig.savefig(folder / names[-1], dpi=80)
    plt.close(fig)

    worst = sorted(v.features, key=lambda f: -f.psi if math.isfinite(f.psi) else 0.0)[:MAX_FEATURE_PANELS]
    panels = [(f.feature, f.reference_bins, f.live_bins, f.psi) for f in worst]
    if v.score_reference_bins:
        panels.insert(0, ("score", v.score_reference_bins, v.score_live_bins, v.score_psi or float("nan")))
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (name, ref, live, p) in zip(axes.flat, panels, strict=False):
        idx = list(range(len(ref)))
        ax.bar([i - 0.2 for i in idx], ref, width=0.4, label="training")
        if live:
            ax.bar([i + 0.2 for i in idx], live, width=0.4, label="live")
        ax.set_title(f"{name}\nPSI {_fmt(p)}", fontsize=8)
        ax.set_xlabel("reference quantile bin", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.subplots_adjust(hspace=0.9, wspace=0.3)  # tight_layout costs seconds on a 16-panel grid
    names.append(f"{slug}-distributions.png")
    fig.savefig(folder / names[-1], dpi=80)
    plt.close(fig)
    return names


def _markdown(result: MonitorResult, plots: dict[str, list[str]]) -> str:
    generated = datetime.fromtimestamp(result.evaluated_at_unix_s, UTC).strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        f"# Drift report: {result.window.label()}",
        "",
        f"Drift window {result.window.label()}; quality window {result.quality_window.label()} "
        f"(labelled predictions only). Generated {generated} UTC.",
        "",
        f"Thresholds: PSI >= {PSI_WARN} watch, >= {PSI_ALERT} drift; KS >= {KS_ALERT} drift (continuous features and "
        f"score); skew = (live mean - training mean) / pooled std, |skew| >= {SKEW_ALERT} is worth a look.",
        "",
        "| version | predictions | status | score PSI | score KS | labelled | precision | recall | PR-AUC | "
        "model age |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in result.versions:
        q = v.quality
        lines.append(
            f"| {v.model_name} v{v.model_version} | {v.predictions} | {_status(v)} | {_fmt(v.score_psi)} | "
            f"{_fmt(v.score_ks)} | {q.labelled if q else '-'} | {_fmt(q.precision if q else None)} | "
            f"{_fmt(q.recall if q else None)} | {_fmt(q.pr_auc if q else None)} | {_age(v.model_age_seconds)} |"
        )
    for v in result.versions:
        lines += ["", f"## {v.model_name} version {v.model_version}", ""]
        if not v.features:
            lines.append(f"No drift computed: {v.error or v.skipped}.")
            continue
        lines += [
            "| feature | PSI | KS | missing | skew | training mean | live mean | status |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for f in v.features:
            lines.append(
                f"| {f.feature} | {_fmt(f.psi)} | {_fmt(f.ks)} | {_pct(f.missing_rate)} | {_fmt(f.skew, 2)} | "
                f"{_fmt(f.reference_mean, 4)} | {_fmt(f.live_mean, 4)} | {f.status} |"
            )
        lines.append("")
        lines += [f"![{name}]({name})" for name in plots.get(_slug(v), [])]
    return "\n".join(lines) + "\n"


def _jsonable(result: MonitorResult) -> dict[str, Any]:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    out = clean(asdict(result))
    for v, raw in zip(out["versions"], result.versions, strict=True):
        v["outcome"] = raw.outcome
    return out


def write_report(result: MonitorResult, output_dir: Path) -> Path:
    """Write one window's report: `report.md`, `report.json` and PNG plots per version with drift values.

    Returns:
        The window's folder, `<output_dir>/<window end, UTC>`.
    """
    folder = output_dir / window_folder_name(result)
    folder.mkdir(parents=True, exist_ok=True)
    plots = {_slug(v): _plots(v, folder) for v in result.versions if v.features}
    (folder / REPORT_FILE).write_text(_markdown(result, plots), encoding="utf-8")
    (folder / JSON_FILE).write_text(json.dumps(_jsonable(result), indent=2), encoding="utf-8")
    return folder
