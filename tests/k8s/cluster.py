"""Helpers of the tests that run against the real control plane of scripts/kube/sandbox.py (marker `cluster`)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from scripts.kube.sandbox import TOOLS, ControlPlane
from tests.k8s.crd import UPSTREAM

KUBECTL = TOOLS / "bin" / "kubectl"


def api_client(plane: ControlPlane, kubeconfig: Path | None = None) -> client.ApiClient:
    """A Kubernetes client for the sandbox (the admin, or whoever `kubeconfig` names)."""
    return config.new_client_from_config(config_file=str(kubeconfig or plane.kubeconfig))


def kubectl(plane: ControlPlane, *args: str, stdin: str | None = None, check: bool = True) -> str:
    """Run the pinned kubectl against the sandbox; its stdout (AssertionError with stderr when it fails)."""
    result = subprocess.run(
        [str(KUBECTL), f"--kubeconfig={plane.kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result.stdout


def apply_objects(plane: ControlPlane, objects: list[dict[str, Any]], *extra: str) -> str:
    """Server-side apply objects with kubectl (field manager `tests`)."""
    text = yaml.safe_dump_all(objects)
    return kubectl(plane, "apply", "--server-side", "--field-manager=tests", "-f", "-", *extra, stdin=text)


def install_crds(plane: ControlPlane, *groups: str) -> None:
    """Install the upstream CRDs of ../shared/upstream/<group>/ and wait until they are Established."""
    paths = [p for g in groups for p in sorted((UPSTREAM / g).glob("*.yaml"))]
    crds = [
        d for p in paths for d in yaml.safe_load_all(p.read_text()) if d and d.get("kind") == "CustomResourceDefinition"
    ]
    apply_objects(plane, crds)
    names = [f"crd/{c['metadata']['name']}" for c in crds]
    kubectl(plane, "wait", "--for=condition=Established", "--timeout=60s", *names)


def ensure_namespace(plane: ControlPlane, name: str) -> None:
    apply_objects(plane, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])


def get_json(plane: ControlPlane, *args: str) -> dict[str, Any]:
    return json.loads(kubectl(plane, "get", "-o", "json", *args))


def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; AssertionError naming `what` (and the last value) if not."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not reached in {timeout:g} s (last: {last!r})")
