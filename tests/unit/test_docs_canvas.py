"""The MLOps Stack Canvas (docs/canvas.md) names one decision record per block, each with context, decision
and consequences (issue 6, item 7)."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
#: The blocks of the MLOps Stack Canvas.
BLOCKS = {
    "Value proposition",
    "Data sources and versioning",
    "Data analysis and experiment management",
    "Feature store and workflows",
    "Foundations (infrastructure, images)",
    "Build and training compute",
    "CI / CT / CD",
    "Model registry",
    "Model deployment",
    "Prediction serving",
    "Model and data monitoring",
    "Metadata store",
}


def canvas_rows() -> dict[str, str]:
    """Block name -> the row's last cell (its decision record reference)."""
    rows = {}
    for line in (DOCS / "canvas.md").read_text().splitlines():
        if match := re.match(r"^\|\s*\*\*(?P<block>[^*]+)\*\*\s*\|.*\|(?P<ref>[^|]*)\|\s*$", line):
            rows[match["block"].strip()] = match["ref"]
    return rows


def test_every_canvas_block_is_filled_in_and_names_a_decision_record() -> None:
    rows = canvas_rows()
    assert set(rows) == BLOCKS
    for block, ref in rows.items():
        numbers = re.findall(r"\b(\d{4})\b", ref)
        assert numbers, f"canvas block {block!r} names no decision record"
        for number in numbers:
            assert list((DOCS / "adr").glob(f"{number}-*.md")), f"{block!r}: no docs/adr/{number}-*.md"


def test_every_decision_record_has_context_decision_and_consequences() -> None:
    records = sorted((DOCS / "adr").glob("[0-9][0-9][0-9][0-9]-*.md"))
    assert len(records) >= len(BLOCKS)
    for path in records:
        headings = re.findall(r"^## (\w+)", path.read_text(), re.M)
        assert {"Context", "Decision", "Consequences"} <= set(headings), path.name
