"""docs/architecture.md tells the truth about the tree: every module it names exists, and it names every package
and every module of the core and the model server."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
#: Top-level packages whose paths and dotted names the document may use.
ROOTS = ("mlplatform", "serving", "components", "pipelines")
#: Packages whose modules the document must all name (each package below them too).
DOCUMENTED = ("mlplatform", "serving")

_ROOTS = "|".join(ROOTS)
#: A path into one of the packages, e.g. `mlplatform/rollout/analysis.py`, `components/<step>/component.py`,
#: `components/<step>/{step,component}.py`; not preceded by a path or word (helm/mlplatform/... is the chart).
PATH = re.compile(rf"(?<![\w/.-])(?:{_ROOTS})/[\w/.*<>{{}},-]*")
#: A dotted module name, e.g. `mlplatform.rollout.start.run_rollout`; not preceded by a word, dot or path.
DOTTED = re.compile(rf"(?<![\w/.-])(?:{_ROOTS})(?:\.[A-Za-z_]\w*)+")


def _expand_braces(path: str) -> list[str]:
    """`a/{b,c}.py` -> [`a/b.py`, `a/c.py`] (one level, enough for this document)."""
    match = re.search(r"\{([^{}]*)\}", path)
    if match is None:
        return [path]
    return [
        expanded
        for option in match[1].split(",")
        for expanded in _expand_braces(path[: match.start()] + option + path[match.end() :])
    ]


def named_paths(text: str) -> set[str]:
    """Every path into the packages that `text` names (trailing punctuation dropped)."""
    return {m.rstrip(".,:;") for m in PATH.findall(text)}


def missing_paths(text: str, root: Path = ROOT) -> list[str]:
    """The paths `text` names that do not exist; `<placeholder>` and `*` match any one name."""
    missing = []
    for named in sorted(named_paths(text)):
        for path in _expand_braces(named):
            pattern = re.sub(r"<[^<>/]*>", "*", path).rstrip("/")
            if not any(root.glob(pattern)):
                missing.append(path)
    return missing


def _module_names(body: list[ast.stmt]) -> set[str]:
    """The names a module's top level binds: definitions, assignments, imports (also inside `if` and `try`)."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.If | ast.Try):
            blocks = [node.body, node.orelse, getattr(node, "finalbody", [])]
            blocks += [handler.body for handler in getattr(node, "handlers", [])]
            names |= {name for block in blocks for name in _module_names(block)}
    return names


@cache
def _modules(root: Path = ROOT) -> dict[str, set[str]]:
    """Dotted module name -> the names its module binds at the top level."""
    modules: dict[str, set[str]] = {}
    for package in ROOTS:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = _module_names(ast.parse(path.read_text()).body)
    return modules


def unknown_dotted_names(text: str, root: Path = ROOT) -> list[str]:
    """Dotted names in `text` whose module does not exist, or whose module does not define the named attribute.

    `mlplatform.rollout.start.run_rollout` resolves to the module `mlplatform.rollout.start` and its function
    `run_rollout`; `mlplatform.training.train_model` does not (the package `mlplatform.training` has no such name).
    """
    modules = _modules(root)
    unknown = []
    for name in sorted(set(DOTTED.findall(text))):
        parts = name.split(".")
        k = len(parts)
        while k and ".".join(parts[:k]) not in modules:
            k -= 1
        if k == 0 or (k < len(parts) and parts[k] not in modules[".".join(parts[:k])]):
            unknown.append(name)
    return unknown


def documented_packages(root: Path = ROOT) -> list[Path]:
    """The packages the document must describe: `DOCUMENTED` and every package below them."""
    return sorted(init.parent for package in DOCUMENTED for init in (root / package).rglob("__init__.py"))


def _named(text: str, path: str) -> bool:
    """Whether `text` names `path` (`mlplatform/data/` or `mlplatform/data/labels.py`) as a path or dotted name."""
    dotted = re.escape(path.removesuffix("/").removesuffix(".py").replace("/", "."))
    as_path = re.escape(path) + (r"(?![\w])" if path.endswith("/") else "")
    if re.search(rf"(?<![\w/.-]){as_path}", text):
        return True
    # A package is named by itself (`mlplatform.data`), a module also by one of its attributes (`....labels.Label`).
    after = r"(?![\w.])" if path.endswith("/") else r"(?!\w)"
    return re.search(rf"(?<![\w/.-]){dotted}{after}", text) is not None


def unnamed_modules(text: str, root: Path = ROOT) -> list[str]:
    """Every package of `documented_packages` and every module directly in one that `text` does not name."""
    unnamed = []
    for package in documented_packages(root):
        relative = package.relative_to(root).as_posix() + "/"
        if not _named(text, relative):
            unnamed.append(relative)
        for module in sorted(package.glob("*.py")):
            if module.stem in ("__init__", "__main__"):
                continue
            path = module.relative_to(root).as_posix()
            if not _named(text, path):
                unnamed.append(path)
    return unnamed


def test_every_path_the_architecture_names_exists() -> None:
    assert missing_paths(DOC.read_text()) == []


def test_every_dotted_module_name_the_architecture_names_exists() -> None:
    assert unknown_dotted_names(DOC.read_text()) == []


def test_the_architecture_names_every_package_and_module() -> None:
    assert unnamed_modules(DOC.read_text()) == []


def test_the_checks_see_the_names_in_the_architecture() -> None:
    text = DOC.read_text()
    paths, dotted = named_paths(text), set(DOTTED.findall(text))
    assert {"components/deploy/step.py", "mlplatform/rollout/analysis.py", "serving/transformer.py"} <= paths
    assert "mlplatform.rollout.start.run_rollout" in dotted
    assert len(documented_packages()) >= 12  # mlplatform, its packages, serving


def _rename(old: str, new: str) -> Callable[[str], str]:
    return lambda text: text.replace(old, new)


def _unmention(path: str) -> Callable[[str], str]:
    """Rename every mention of `path` (as a path and as a dotted name) to a name that does not exist."""
    dotted = path.removesuffix("/").removesuffix(".py").replace("/", ".")

    def mutate(text: str) -> str:
        text = re.sub(rf"(?<![\w/.-]){re.escape(path.removesuffix('/').removesuffix('.py'))}(?!\w)", "gone", text)
        return re.sub(rf"(?<![\w/.-]){re.escape(dotted)}(?!\w)", "gone", text)

    return mutate


@pytest.mark.parametrize(
    ("check", "mutate", "reported"),
    [
        (
            missing_paths,
            _rename("mlplatform/rollout/analysis.py", "mlplatform/rollout/analyses.py"),
            "mlplatform/rollout/analyses.py",
        ),
        (missing_paths, _rename("`mlplatform/feedback/`", "`mlplatform/feedbacks/`"), "mlplatform/feedbacks/"),
        (missing_paths, lambda t: t + "\n`serving/local.py`\n", "serving/local.py"),
        (missing_paths, lambda t: t + "\n`components/<step>/steps.py`\n", "components/<step>/steps.py"),
        (missing_paths, lambda t: t + "\n`components/deploy/{step,wrapper}.py`\n", "components/deploy/wrapper.py"),
        (unknown_dotted_names, lambda t: t + "\n`mlplatform.tracking`\n", "mlplatform.tracking"),
        (
            unknown_dotted_names,
            lambda t: t + "\n`mlplatform.training.train_model`\n",
            "mlplatform.training.train_model",
        ),
        (
            unknown_dotted_names,
            _rename("mlplatform.rollout.start.run_rollout", "mlplatform.rollout.start.run_rollouts"),
            "mlplatform.rollout.start.run_rollouts",
        ),
        (unnamed_modules, _unmention("mlplatform/monitoring/drift.py"), "mlplatform/monitoring/drift.py"),
        (unnamed_modules, _unmention("serving/schema.py"), "serving/schema.py"),
        (unnamed_modules, _unmention("mlplatform/errors.py"), "mlplatform/errors.py"),
        (unnamed_modules, _unmention("mlplatform/local/"), "mlplatform/local/"),
    ],
)
def test_the_checks_fail_when_the_architecture_is_wrong(
    check: Callable[[str], list[str]], mutate: Callable[[str], str], reported: str
) -> None:
    text = DOC.read_text()
    assert reported not in check(text)
    assert reported in check(mutate(text))
