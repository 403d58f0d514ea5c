"""Architecture rules that import-linter (.importlinter, run by `make test`) does not express."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("mlplatform", "serving", "components", "pipelines")


def _project_imports_in_functions(path: Path) -> list[tuple[int, str]]:
    """(line, source line) of every import of a project module inside a function of `path`."""
    text = path.read_text()
    lines = text.splitlines()
    found = []
    for fn in ast.walk(ast.parse(text)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                module = node.module
            elif isinstance(node, ast.Import):
                module = node.names[0].name
            else:
                continue
            if module.split(".")[0] in PROJECT:
                found.append((node.lineno, " ".join(lines[node.lineno - 1 : node.end_lineno or node.lineno])))
    return found


def _uncommented(paths: list[Path], root: Path = ROOT) -> list[str]:
    return [
        f"{p.relative_to(root)}:{line}: {source.strip()}"
        for p in paths
        for line, source in _project_imports_in_functions(p)
        if "#" not in source
    ]


def _checked_files() -> list[Path]:
    # KFP lightweight components (components/*/component.py) are exempt: KFP ships the function's source, so
    # its imports must live in its body.
    files = [*ROOT.glob("mlplatform/**/*.py"), *ROOT.glob("serving/*.py"), *ROOT.glob("pipelines/*.py")]
    return sorted([*files, *ROOT.glob("components/*/step.py")])


def test_a_project_import_inside_a_function_says_why_in_a_comment() -> None:
    """Imports sit at module level; a deferred one (an optional heavy dependency) carries its reason."""
    assert _uncommented(_checked_files()) == []


def test_the_rule_finds_an_uncommented_import_in_a_function(tmp_path: Path) -> None:
    module = ROOT / "mlplatform" / "_probe_for_architecture_test.py"
    try:
        module.write_text(
            "def f():\n    from mlplatform import registry\n\n\ndef g():\n    from mlplatform import params  # why\n"
        )
        assert _uncommented([module]) == [
            "mlplatform/_probe_for_architecture_test.py:2: from mlplatform import registry"
        ]
    finally:
        module.unlink()


@pytest.mark.parametrize("package", sorted(p.parent.name for p in ROOT.glob("mlplatform/*/__init__.py")))
def test_every_package_is_a_layer_of_the_import_contracts(package: str) -> None:
    """A new package must be placed in the layers of .importlinter, or its dependencies go unchecked."""
    assert f"mlplatform.{package}\n" in (ROOT / ".importlinter").read_text()
