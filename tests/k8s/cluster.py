"""Helpers of the tests that run against the real control plane of scripts/kube/sandbox.py (marker `cluster`)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from mlplatform.registry import RegisteredVersion
from mlplatform.rollout.settings import CanarySettings
from scripts.kube.sandbox import TOOLS, ControlPlane
from tests.k8s.crd import UPSTREAM

KUBECTL = TOOLS / "bin" / "kubectl"
#: The InferenceService the chart installs, and the registered model it serves.
NAME = "fraud-detector"
#: Canary settings of the rollouts run against the sandbox: seconds per step, not a cluster's minutes.
CANARY = CanarySettings(
    prometheus_url="http://prometheus.monitoring:9090",
    step_window_seconds=2,
    analysis_interval_seconds=1,
    min_requests=10,
    ready_timeout_seconds=60,
)


def registered(version: str) -> RegisteredVersion:
    """A registered version of the model whose artifacts the MLflow server proxies (mlflow-artifacts:/)."""
    return RegisteredVersion(
        NAME, version, f"mlflow-artifacts:/1/run{version}/artifacts/model", f"run{version}", [], {}
    )


def api_client(plane: ControlPlane, kubeconfig: Path | None = None) -> client.ApiClient:
    """A Kubernetes client for the sandbox (the admin, or whoever `kubeconfig` names)."""
    return config.new_client_from_config(config_file=str(kubeconfig or plane.kubeconfig))


def token_client(plane: ControlPlane, account: str, namespace: str) -> client.ApiClient:
    """A client that authenticates as a ServiceAccount with a token of its own (TokenRequest), as its pod would."""
    token = kubectl(plane, "create", "token", account, "-n", namespace).strip()
    configuration = client.Configuration()
    configuration.host = plane.server
    configuration.ssl_ca_cert = str(plane.pki / "ca.crt")
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(configuration)


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
    """Install the upstream CRDs of ../shared/upstream/<group>/ that are not installed yet (the sandbox brings
    KServe's own) and wait until every CRD is Established."""
    present = set(kubectl(plane, "get", "crd", "-o", "name").split())
    files = []
    for path in (p for g in groups for p in sorted((UPSTREAM / g).glob("*.yaml"))):
        text = path.read_text()
        name = re.search(r"(?m)^  name: (\S+)$", text)  # the CRD's metadata.name (no 2 MB YAML parse)
        if "kind: CustomResourceDefinition" in text and name and f"{CRD}/{name[1]}" not in present:
            files += ["-f", str(path)]
    if files:
        kubectl(plane, "apply", "--server-side", "--field-manager=tests", *files)
    eventually(lambda: _all_established(plane), "every CRD Established", timeout=60)


CRD = "customresourcedefinition.apiextensions.k8s.io"


def _all_established(plane: ControlPlane) -> bool:
    crds = json.loads(kubectl(plane, "get", "crd", "-o", "json"))["items"]
    return all(
        any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (d.get("status") or {}).get("conditions") or []
        )
        for d in crds
    )


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
