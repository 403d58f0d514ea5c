"""Generate helm/mlplatform/values.schema.json from values.yaml and its `## @param` comments."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "helm" / "mlplatform"
PARAM = re.compile(r"^\s*## @param (?P<key>[\w.]+)(?: \[(?P<mods>[^\]]*)\])? (?P<doc>.+)$")
TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def parse_params(text: str) -> dict[str, tuple[list[str], str]]:
    """`key -> (modifiers, description)` for every `## @param key [modifiers] description` line."""
    params = {}
    for line in text.splitlines():
        if match := PARAM.match(line):
            mods = [m.strip() for m in (match["mods"] or "").split(",") if m.strip()]
            params[match["key"]] = (mods, match["doc"].strip())
    return params


def leaf_schema(value: Any, mods: list[str], doc: str) -> dict[str, Any]:
    """The schema of one documented value: its type (from the modifiers or the default) and constraints."""
    kinds = [m for m in mods if m in TYPES.values()]
    schema: dict[str, Any] = {"description": doc}
    kind = kinds[0] if kinds else TYPES.get(type(value))
    if kind is None:
        raise ValueError(f"{doc!r}: cannot infer a type from {value!r}; add [string|integer|...] to its @param")
    schema["type"] = [kind, "null"] if "nullable" in mods else kind
    for mod in mods:
        name, _, arg = mod.partition(":")
        if name == "enum":
            schema["enum"] = arg.split("|")
        elif name in ("minimum", "maximum"):
            schema[name] = int(arg)
    return schema


def build(values: dict[str, Any], params: dict[str, tuple[list[str], str]], prefix: str = "") -> dict[str, Any]:
    """An object schema for `values`; undocumented or misspelled keys are errors (additionalProperties false)."""
    properties: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if path in params:
            mods, doc = params[path]
            properties[key] = leaf_schema(value, mods, doc)
        elif isinstance(value, dict):
            properties[key] = build(value, params, f"{path}.")
        else:
            raise ValueError(f"{path} has no '## @param {path} ...' line in values.yaml")
    return {"type": "object", "additionalProperties": False, "properties": properties}


def generate(chart: Path = CHART) -> str:
    """The schema document for `chart`, as the text that belongs in values.schema.json."""
    text = (chart / "values.yaml").read_text()
    params = parse_params(text)
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "title": "mlplatform chart values"}
    schema.update(build(yaml.safe_load(text), params))
    return json.dumps(schema, indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if values.schema.json is not up to date")
    args = parser.parse_args()
    target = CHART / "values.schema.json"
    text = generate()
    if args.check:
        if not target.exists() or target.read_text() != text:
            print(f"{target} is out of date: run python scripts/values_schema.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
