"""Secure defaults of every pod we ship, and checkov with no finding that .checkov.yaml does not explain."""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s import kube
from tests.k8s.kube import objects

pytestmark = pytest.mark.k8s

CASES = [(p, p != "minimal") for p in kube.PROFILES]


def kustomize(path: str) -> str:
    return kube.run(kube.tool("kustomize"), "build", str(kube.ROOT / path)).stdout


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """`(where, pod-level spec, containers)` of every pod an object creates, InferenceServices included."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        pod = spec["template"]["spec"]
        yield name, pod, pod["containers"] + pod.get("initContainers", [])
    elif doc["kind"] == "Pod":
        yield name, spec, spec["containers"]
    elif doc["kind"] == "InferenceService":
        for component in ("predictor", "transformer"):
            if part := spec.get(component):
                containers = part.get("containers", []) + ([part["model"]] if "model" in part else [])
                yield f"{name}/{component}", part, containers
    elif doc["kind"] == "ServingRuntime":
        yield name, {"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}, spec["containers"]


KUSTOMIZATIONS = ("manifests/overlays/kind", "manifests/overlays/production", "manifests/dev-services")
#: Every manifest stream we ship: each Helm profile and each kustomization (rendered when a test runs, not
#: at collection, so that collecting the suite starts no tool).
#: The production profile with the event stream on (Kafka by reference and the stream feature processor).
EVENTS = "helm:production+events"
SOURCES = [f"helm:{profile}" for profile, _ in CASES] + [EVENTS] + list(KUSTOMIZATIONS)


@functools.cache
def manifest_of(source: str) -> str:
    if source == EVENTS:
        return kube.helm_template("production", kube.WITH_MODEL, kube.WITH_KAFKA, kube.WITH_STREAM_FEATURES)
    if source.startswith("helm:"):
        profile = source.removeprefix("helm:")
        return kube.helm_template(profile, kube.WITH_MODEL if dict(CASES)[profile] else {})
    return kustomize(source)


def manifests() -> Iterator[tuple[str, str]]:
    for source in SOURCES:
        yield source, manifest_of(source)


@pytest.mark.parametrize("source", SOURCES)
def test_every_pod_is_non_root_read_only_unprivileged_and_bounded(source: str) -> None:
    manifest = manifest_of(source)
    checked = 0
    for doc in objects(manifest):
        for where, pod, containers in pod_specs(doc):
            pod_ctx = pod.get("securityContext", {})
            for c in containers:
                ctx = c["securityContext"]
                at = f"{source} {where} {c.get('name', 'model')}"
                assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, at
                assert ctx["readOnlyRootFilesystem"] is True, at
                assert ctx["allowPrivilegeEscalation"] is False, at
                assert ctx["capabilities"]["drop"] == ["ALL"] and not ctx["capabilities"].get("add"), at
                seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile"))
                assert seccomp == {"type": "RuntimeDefault"}, at
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{at}: {kind}"
                checked += 1
    assert checked > 0


@pytest.mark.parametrize("source", SOURCES)
def test_long_running_containers_have_probes(source: str) -> None:
    for doc in objects(manifest_of(source)):
        if doc["kind"] == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                assert "readinessProbe" in c and "livenessProbe" in c, f"{source} {doc['metadata']['name']}"


def checkov_skips() -> list[str]:
    return yaml.safe_load((kube.ROOT / ".checkov.yaml").read_text())["skip-check"]


def test_every_skipped_checkov_check_is_explained_in_the_config() -> None:
    text = (kube.ROOT / ".checkov.yaml").read_text()
    for check in checkov_skips():
        assert re.search(rf"^\s*# {re.escape(check)}\b.*\n", text, re.M) or re.search(
            rf"^\s*# .*{re.escape(check)}", text, re.M
        ), f"{check} is skipped in .checkov.yaml without a comment that names it"


def test_checkov_finds_nothing_unexplained_in_the_chart_and_the_overlays(tmp_path: Path) -> None:
    for source, manifest in manifests():
        (tmp_path / f"{re.sub(r'[^a-z0-9]+', '-', source)}.yaml").write_text(manifest)
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false", "LOG_LEVEL": "ERROR"}
    args = [kube.tool("checkov"), "--config-file", str(kube.ROOT / ".checkov.yaml"), "-d", str(tmp_path), "-o", "json"]
    result = kube.subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{f['check_id']} {f['resource']} ({f['file_path']}): {f['check_name']}"
        for r in reports
        for f in r["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    passed = sum(r["summary"]["passed"] for r in reports)
    assert passed > 100 and sum(r["summary"]["resource_count"] for r in reports) > 50
