"""Validate objects against the CustomResourceDefinitions in ../shared/upstream, strictly (unknown fields fail)."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# ../shared/upstream beside the checkout (as in CI); MLPLATFORM_UPSTREAM_DIR points elsewhere.
UPSTREAM = Path(os.environ.get("MLPLATFORM_UPSTREAM_DIR", Path(__file__).resolve().parents[3] / "shared" / "upstream"))


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Forbid properties a schema does not declare, as `kubeconform -strict` does.

    Objects that preserve unknown fields or declare `additionalProperties` keep their own rule.
    """
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """`(apiVersion, kind)` -> strict JSON schema, for every served version of every upstream CRD."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(UPSTREAM.glob("*/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if version.get("served", True):
                    api_version = f"{spec['group']}/{version['name']}"
                    schemas[(api_version, spec["names"]["kind"])] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def validate_custom_resource(obj: dict[str, Any]) -> None:
    """Raise `jsonschema.ValidationError` unless `obj` is valid for its upstream CRD (KeyError if none)."""
    schema = crd_schemas()[(obj["apiVersion"], obj["kind"])]
    jsonschema.validate(obj, schema, cls=jsonschema.Draft7Validator)
