"""Run the real Kubernetes tools (helm, kustomize, kubeconform, checkov) on what this repository ships."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from tests.k8s.crd import crd_schemas

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("MLPLATFORM_TOOLS_DIR", ROOT / ".tools")) / "bin"
CHART = ROOT / "helm" / "mlplatform"
PROFILES = {
    "default": [],
    "kind": [CHART / "profiles" / "kind-values.yaml"],
    "production": [CHART / "profiles" / "production-values.yaml"],
    "minimal": [CHART / "profiles" / "minimal-values.yaml"],
}
#: A registered model version, as the install guide passes it when the InferenceService is enabled.
WITH_MODEL: dict[str, Any] = {
    "fraudDetector": {
        "enabled": True,
        "model": {"version": "3", "storageUri": "s3://mlflow/1/0123456789abcdef/artifacts/model"},
    }
}
#: Kafka by reference, as for a Strimzi cluster named "events" with its TLS listener and SCRAM users (ADR 0018),
#: the monitor's user's password included (it reads the stream then).
WITH_KAFKA: dict[str, Any] = {
    "kafka": {
        "enabled": True,
        "bootstrapServers": "events-kafka-bootstrap:9093",
        "securityProtocol": "SASL_SSL",
        "tls": {"caSecret": "events-cluster-ca-cert"},
        "sasl": {"existingSecret": "mlplatform-serving"},
        "strimzi": {"cluster": "events"},
    },
    "monitoring": {"monitor": {"kafka": {"sasl": {"existingSecret": "mlplatform-monitor"}}}},
}
#: The stream feature processor on that Kafka (ADR 0019), with its user's password Secret.
WITH_STREAM_FEATURES: dict[str, Any] = {
    "streamFeatures": {"enabled": True, "sasl": {"existingSecret": "mlplatform-stream-features"}}
}
#: The Kubernetes version everything is validated for: the kind node image of scripts/cluster.sh.
KUBERNETES_VERSION = "1.35.0"
NAMESPACE = "mlplatform"
SCHEMA_DIR = ROOT / "build" / "k8s-schemas"


def tool(name: str) -> str:
    """Path of a tool built by `make tools` (scripts/tools.sh)."""
    path = TOOLS / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make tools` (scripts/tools.sh builds the pinned versions)")
    return str(path)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool with no network access needed; its output is returned as text."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge values dictionaries, later layers winning (as repeated `helm -f` does)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = value
    return merged


def helm(command: str, profile: str = "default", *values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`helm lint|template` of the chart for a profile plus extra values layers (passed as a values file)."""
    args = [tool("helm"), command]
    if command == "template":
        args += ["mlplatform"]
    args += [str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBERNETES_VERSION]
    if command == "lint":
        args += ["--strict"]
    for path in PROFILES[profile]:
        args += ["-f", str(path)]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as extra:
        yaml.safe_dump(merge(*values), extra)
        extra.flush()
        return run(*args, "-f", extra.name)


def helm_template(profile: str = "default", *values: dict[str, Any]) -> str:
    """`helm template` of the chart (test hooks included) for a profile, as kubectl would receive it."""
    return helm("template", profile, *values).stdout


def objects(manifest: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a manifest stream."""
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def find(docs: list[dict[str, Any]], kind: str, name_contains: str = "") -> dict[str, Any]:
    """The one object of `kind` whose name contains `name_contains`."""
    found = [d for d in docs if d["kind"] == kind and name_contains in d["metadata"]["name"]]
    assert len(found) == 1, (
        f"expected one {kind} named *{name_contains}*, found {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


@functools.cache
def schema_dir() -> Path:
    """Kubernetes schemas from kubernetes-validate and the upstream CRDs as JSON schema, for kubeconform.

    Layout: `<version>-local-strict/<kind>-<group>-<version>.json` (kubernetes-validate's files, refs to
    `_definitions.json` beside them) and `crds/<group>/<kind>_<version>.json` (from ../shared/upstream,
    strict: unknown fields fail). Written once per session into build/k8s-schemas (git-ignored).
    """
    source = (
        Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}-local-strict"
    )
    if not source.is_dir():
        raise FileNotFoundError(
            f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for {source.name}"
        )
    target = SCHEMA_DIR / source.name
    if not target.is_dir():
        SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
        tmp = SCHEMA_DIR / f".{source.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        # kubernetes-validate's schemas carry an https `$id` and absolute refs ("/api/_definitions.json#...")
        # that its own registry resolves; kubeconform resolves refs as files, so the `$id` goes and the
        # refs become relative to the schema's folder.
        for path in source.glob("*.json"):
            schema = json.loads(path.read_text().replace('"/api/_definitions.json#', '"_definitions.json#'))
            schema.pop("$id", None)
            (tmp / path.name).write_text(json.dumps(schema))
        tmp.rename(target)
    crds = SCHEMA_DIR / "crds"
    shutil.rmtree(crds, ignore_errors=True)
    for (api_version, kind), schema in crd_schemas().items():
        group, version = api_version.split("/")
        path = crds / group / f"{kind.lower()}_{version}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema))
    return SCHEMA_DIR


def kubeconform(manifest: str) -> dict[str, Any]:
    """kubeconform -strict on a manifest stream, offline, against the prepared schemas; returns its JSON report.

    A kind without a schema (neither Kubernetes nor an upstream CRD) is an error, not a skip.
    """
    schemas = schema_dir()
    args = [
        tool("kubeconform"),
        "-strict",
        "-summary",
        "-output",
        "json",
        "-kubernetes-version",
        KUBERNETES_VERSION,
        "-schema-location",
        str(schemas / "{{ .NormalizedKubernetesVersion }}-local-strict/{{ .ResourceKind }}{{ .KindSuffix }}.json"),
        "-schema-location",
        str(schemas / "crds/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"),
        "-",
    ]
    result = subprocess.run(args, input=manifest, capture_output=True, text=True, timeout=300, cwd=ROOT)
    report = json.loads(result.stdout)
    if result.returncode != 0:
        raise AssertionError(f"kubeconform found problems:\n{json.dumps(report, indent=2)}\n{result.stderr}")
    return report
