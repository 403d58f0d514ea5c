"""`mlplatform score`: the ML Test Score of this project."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mlplatform import mltestscore
from mlplatform.cli.common import (
    console,
    guarded,
)


# ---------------------------------------------------------------- ML Test Score (issue 8)
@guarded
def score_command(
    run_tests: Annotated[
        bool, typer.Option("--run/--no-run", help="Run the mapped tests and count only the passing ones.")
    ] = False,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the scores (JSON).")] = Path(
        "build/mltestscore.json"
    ),
) -> None:
    """The ML Test Score (Breck et al. 2017): each of the 28 checks mapped to this project's tests and monitoring."""

    result = mltestscore.score(run=run_tests)
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
