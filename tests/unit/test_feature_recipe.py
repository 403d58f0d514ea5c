"""The recipe of docs/adding-a-feature.md, applied to a copy of the project: it still applies, and the feature it adds
reaches the model with the same values in training and serving (ML Test Score data-6)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mlplatform.features.compute import CUSTOMER_FEATURES, MODEL_FEATURES

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "adding-a-feature.md"
#: The recipe's example feature (not in the real model: the page says why).
FEATURE = "cust_amount_sum_24h"
#: What the end-to-end run copies: the packages, the Feast repo, the pytest configuration and the test files it runs.
COPIED = (
    "mlplatform",
    "components",
    "pipelines",
    "serving",
    "feature_repo",
    "pyproject.toml",
    "tests/unit/test_features.py",
    "tests/unit/recipe_parity_check.py",
)
STEP = re.compile(r"^## (\d+)\. (.+)$")
FENCE = re.compile(r"^```(.*)$")


class RecipeError(Exception):
    """The page cannot be read as a recipe, or one of its edits does not apply."""


@dataclass(frozen=True)
class Edit:
    """One code block pair of the page: insert `text` after `anchor` in `path`; with `anchor` None, `text` is a quote
    that `path` must still contain."""

    step: str
    path: str
    anchor: str | None
    text: str


def parse_recipe(doc: str) -> list[Edit]:
    """The edits of the page, in order, each with the step it belongs to.

    Code blocks tagged `after:<path>` (the lines to insert after, which the paragraph before must name as `<path>`)
    are followed by one tagged `insert`; `quote:<path>` blocks are lines the file must still hold. Other blocks are
    prose.

    Raises:
        RecipeError: A tagged block outside a numbered step, an anchor without its insert block or the other way
            round, an anchor block whose paragraph does not name its file.
    """
    edits: list[Edit] = []
    step = ""
    prose: list[str] = []
    pending: tuple[str, str] | None = None  # (path, anchor) waiting for its insert block
    lines = iter(doc.splitlines())
    for line in lines:
        if heading := STEP.match(line):
            if pending is not None:
                raise RecipeError(f"{step}: the anchor in {pending[0]} has no `insert` block after it")
            step, prose = f"step {heading[1]} ({heading[2]})", []
            continue
        fence = FENCE.match(line)
        if fence is None:
            prose.append(line)
            continue
        tags = fence[1].split()[1:]
        body = []
        for inner in lines:
            if inner.startswith("```"):
                break
            body.append(inner)
        else:
            raise RecipeError(f"{step or 'the page'}: a code block is never closed")
        text = "".join(f"{b}\n" for b in body)
        where = step or "the page (before step 1)"
        for tag in tags:
            kind, _, path = tag.partition(":")
            if kind not in ("after", "insert", "quote"):
                continue
            if not step:
                raise RecipeError(f"{where}: `{tag}` blocks belong under a numbered step (## N. Title)")
            if kind == "after":
                if pending is not None:
                    raise RecipeError(f"{step}: the anchor in {pending[0]} has no `insert` block after it")
                if f"`{path}`" not in "\n".join(prose):
                    raise RecipeError(f"{step}: the paragraph before the anchor block must name `{path}`")
                pending = (path, text)
            elif kind == "insert":
                if pending is None:
                    raise RecipeError(f"{step}: an `insert` block without an `after:<file>` block before it")
                edits.append(Edit(step, pending[0], pending[1], text))
                pending = None
            else:
                edits.append(Edit(step, path, None, text))
        prose = []
    if pending is not None:
        raise RecipeError(f"{step}: the anchor in {pending[0]} has no `insert` block after it")
    return edits


def _line_starts(text: str, lines: str) -> list[int]:
    """Where `lines` (whole lines) occur in `text`."""
    found, i = [], text.find(lines)
    while i >= 0:
        if i == 0 or text[i - 1] == "\n":
            found.append(i)
        i = text.find(lines, i + 1)
    return found


def apply_recipe(root: Path, edits: list[Edit]) -> None:
    """Apply the edits to the tree at `root`, in order.

    Raises:
        RecipeError: Naming the step, the file and the lines, when a file is missing, an anchor occurs other than
            exactly once, or a quote is gone.
    """
    for edit in edits:
        path = root / edit.path
        if not path.is_file():
            raise RecipeError(f"{edit.step}: {edit.path} does not exist")
        text = path.read_text()
        if edit.anchor is None:
            if not _line_starts(text, edit.text):
                raise RecipeError(f"{edit.step}: {edit.path} no longer contains the quoted lines:\n{edit.text}")
            continue
        at = _line_starts(text, edit.anchor)
        if len(at) != 1:
            what = "not found" if not at else f"found {len(at)} times (it must be unique)"
            raise RecipeError(f"{edit.step}: in {edit.path}, the lines to insert after are {what}:\n{edit.anchor}")
        end = at[0] + len(edit.anchor)
        path.write_text(text[:end] + edit.text + text[end:])


def _copy(paths: tuple[str, ...], to: Path) -> None:
    for rel in paths:
        source, target = ROOT / rel, to / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)


def _env(copy: Path) -> dict[str, str]:
    """This environment without the platform's settings (the copy runs on its defaults) and the copy on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPLATFORM_")}
    return {**env, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}


def test_recipe_edits_apply_to_the_current_code(tmp_path: Path) -> None:
    assert FEATURE not in CUSTOMER_FEATURES and FEATURE not in MODEL_FEATURES, (
        f"{FEATURE} is in the real code now: pick another example feature for docs/adding-a-feature.md"
    )
    doc = DOC.read_text()
    assert [int(m[1]) for m in (STEP.match(line) for line in doc.splitlines()) if m] == list(range(1, 9))
    edits = parse_recipe(doc)
    inserts = [e for e in edits if e.anchor is not None]
    assert {e.step.split(" (")[0] for e in inserts} == {"step 1", "step 2", "step 4", "step 5"}
    _copy(tuple(sorted({e.path for e in edits})), tmp_path)
    apply_recipe(tmp_path, edits)
    for path in {e.path for e in inserts}:
        changed = (tmp_path / path).read_text()
        assert FEATURE in changed, path
        compile(changed, path, "exec")  # the edited file is still Python


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            '    "cust_amount_avg_30d": 0.0,\n```',
            '    "cust_amount_avg_30d": 1.0,\n```',
            r"step 4 \(Give it to the model\): in mlplatform/features/compute.py, the lines to insert after are not "
            r"found",
        ),
        (
            '    "cust_amount_avg_30d": (0.0, 1_000_000.0),\n```',
            '    "cust_amount_avg_30d": (0.0, 2_000_000.0),\n```',
            r"step 5 \(Validate its range\): in components/validate/step.py, the lines to insert after are not found",
        ),
        (
            'pytest.approx(last30["amount"].mean())\n```',
            'pytest.approx(last30["amount"].median())\n```',
            r"step 2 \(Test the computation\): in tests/unit/test_features.py, the lines to insert after are not "
            r"found",
        ),
    ],
    ids=["defaults", "ranges", "unit-test"],
)
def test_a_rotten_anchor_fails_naming_its_step(tmp_path: Path, old: str, new: str, message: str) -> None:
    doc = DOC.read_text()
    assert doc.count(old) == 1
    edits = parse_recipe(doc.replace(old, new))
    _copy(tuple(sorted({e.path for e in edits})), tmp_path)
    with pytest.raises(RecipeError, match=message):
        apply_recipe(tmp_path, edits)


def test_an_ambiguous_anchor_or_a_stale_quote_fails_naming_its_step(tmp_path: Path) -> None:
    doc = DOC.read_text()
    edits = parse_recipe(doc)
    _copy(tuple(sorted({e.path for e in edits})), tmp_path)
    [first] = [e for e in edits if e.anchor is not None and "cust_txn_count_30d" in e.anchor]
    ambiguous = Edit(first.step, first.path, '    "cust_amount_avg_30d",\n', first.text)
    with pytest.raises(RecipeError, match=r"step 1 \(Compute it\): .* found 3 times \(it must be unique\)"):
        apply_recipe(tmp_path, [ambiguous])
    [quote, *_] = [e for e in edits if e.anchor is None]
    with pytest.raises(RecipeError, match=r"step 3 \(Declare it to Feast\): feature_repo/fraud_features.py no longer"):
        apply_recipe(tmp_path, [Edit(quote.step, quote.path, None, quote.text.replace("Float64", "Float32"))])
    with pytest.raises(RecipeError, match=r"step 1 \(Compute it\): the anchor in .* has no `insert` block"):
        parse_recipe(doc.replace("```python insert\n", "```python\n", 1))


@pytest.mark.slow
@pytest.mark.mltest("data-6")
def test_recipe_adds_a_feature_that_training_and_serving_agree_on(tmp_path: Path, mlflow_work_dir: Path) -> None:
    copy = tmp_path / "project"
    _copy(COPIED, copy)
    apply_recipe(copy, parse_recipe(DOC.read_text()))

    # Step 2's test, in the copy: the computation matches a brute-force recomputation.
    unit = subprocess.run(
        # --noconftest: the test needs no fixture of tests/conftest.py, whose imports (Feast, torch) take seconds
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest"]
        + ["tests/unit/test_features.py::test_customer_windows_match_a_brute_force_count"],
        cwd=copy,
        env=_env(copy),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert unit.returncode == 0, unit.stdout[-3000:] + unit.stderr[-3000:]

    # Features -> training set -> validation -> training -> serving, in the copy.
    findings_file = tmp_path / "findings.json"
    run = subprocess.run(
        [sys.executable, str(copy / "tests/unit/recipe_parity_check.py"), str(copy), str(mlflow_work_dir), FEATURE]
        + [str(findings_file)],
        cwd=copy,
        env=_env(copy),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    found = json.loads(findings_file.read_text())

    # Definition and Feast declaration: a Float64 field of customer_stats, in the FeatureService, in model order.
    after = MODEL_FEATURES.index("cust_amount_avg_30d") + 1
    assert found["model_features"] == [*MODEL_FEATURES[:after], FEATURE, *MODEL_FEATURES[after:]]
    assert found["view_dtype"] == "Float64"
    assert found["service_features"] == found["model_features"]
    assert found["range"] == [0.0, 100_000_000_000.0]

    # Training: the point-in-time training set carries it, validation passes, the artifact is built on it.
    column = found["train_column"]
    assert column["present"] and column["nulls"] < column["rows"] * 0.2
    assert column["distinct"] > 100 and column["min"] >= 0.0
    assert found["validation"]["violations"] == []
    assert found["train"]["epochs"] == 2 and np.isfinite(found["train"]["final_train_loss"])
    assert found["artifact_features"] == found["model_features"]
    assert FEATURE in found["reference_features"]
    assert "expects features" in found["old_artifact_refused"]  # the new code serves no model without it

    # Serving vs training on the same events: the feature, every model input and the score.
    parity = found["parity"]
    online, offline = np.array(parity["online_feature"]), np.array(parity["offline_feature"])
    np.testing.assert_allclose(online, offline, rtol=0, atol=1e-6)
    assert len(np.unique(online[:-1])) > 5, "known customers should have varied values, not defaults"
    assert parity["flags"][-1] == ["unknown_customer"] and online[-1] == 0.0  # the default on both paths
    assert all(f == [] for f in parity["flags"][:-1])
    assert parity["max_row_difference"] <= 1e-6
    assert parity["max_model_input_difference"] <= 1e-6
    assert parity["max_score_difference"] <= 1e-6
    assert parity["scores_distinct"] > 1
