"""The pinned Helm against the sandbox control plane: install a profile, its storage, readiness and timing.

A release here is the chart installed for real (`helm install`, not `helm template`): the API server checks
every object (schemas, CEL rules, admission, Pod Security), the controllers and the scheduler roll the
Deployments out onto the kwok nodes. No container runs, so readiness is what the control plane reports
(a Deployment Available, a claim Bound), never what a process answered. `time_install` is the figure a
benchmark reuses: seconds from `helm install` to every workload of the release ready.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from scripts.kube.sandbox import ControlPlane
from tests.k8s import kube
from tests.k8s.cluster import api_client, apply_objects, ensure_namespace, kubectl
from tests.k8s.crd import UPSTREAM

RELEASE = "mlplatform"
#: The upstream CRDs the chart's objects need (../shared/upstream/<group>/<group name>_<plural>.yaml).
CRDS = {
    "kserve": ("serving.kserve.io", ("inferenceservices", "servingruntimes")),
    "prometheus-operator": ("monitoring.coreos.com", ("podmonitors", "servicemonitors", "prometheusrules")),
}
#: The default StorageClass, named as kind's. Nothing provisions volumes in the sandbox
#: (`kubernetes.io/no-provisioner`): `volume_for` makes the PersistentVolumes a release's claims bind.
STORAGE_CLASS = "standard"
#: The namespace label of the `restricted` Pod Security Standard (docs/install.md: the namespace can enforce it).
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
#: Which profiles are installed with a model version (docs/install.md: kind A.4, a real cluster B.6 then A.4).
#: default and minimal are installed as `helm install` leaves them, without the InferenceService.
PROFILE_MODEL = {"default": False, "kind": True, "minimal": False, "production": True}


def helm(plane: ControlPlane, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm against the sandbox; its home folders in the sandbox's, not the user's."""
    home = plane.workdir / "helm"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    result = subprocess.run(
        [kube.tool("helm"), f"--kubeconfig={plane.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=kube.ROOT,
        env=env,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@contextmanager
def values_file(*layers: dict[str, Any]) -> Iterator[list[str]]:
    """`-f <file>` arguments for values layers (merged, later layers winning); none for no layers."""
    if not layers:
        yield []
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="values-") as handle:
        yaml.safe_dump(kube.merge(*layers), handle)
        handle.flush()
        yield ["-f", handle.name]


def profile_args(profile: str) -> list[str]:
    return [arg for path in kube.PROFILES[profile] for arg in ("-f", str(path))]


def prepare(plane: ControlPlane) -> None:
    """What every install needs, idempotent: the upstream CRDs, the default StorageClass, namespace kubeflow.

    kubeflow is where Kubeflow Pipelines runs the steps; the kind profile puts the settings ConfigMap and the
    runner's RoleBinding subject there, and on a real cluster KFP's install creates it.
    """
    install_chart_crds(plane)
    storage_class = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Delete",
    }
    kubeflow = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kubeflow"}}
    apply_objects(plane, [storage_class, kubeflow])


def install_chart_crds(plane: ControlPlane, timeout: float = 60) -> None:
    """Apply the upstream CRDs the chart uses (field manager `tests`, as cluster.install_crds) until Established.

    The files go to kubectl as they are: parsing the 2 MB InferenceService CRD with PyYAML takes seconds.
    """
    names = [f"{plural}.{group}" for group, plurals in CRDS.values() for plural in plurals]
    if _established(plane, names):
        return
    # the sandbox's own KServe (scripts/kube/sandbox.py) brings its CRDs: only what is missing is installed
    present = set(
        kubectl(plane, "get", "crd", "-o", "name").replace("customresourcedefinition.apiextensions.k8s.io/", "").split()
    )
    files = [
        UPSTREAM / folder / f"{group}_{plural}.yaml"
        for folder, (group, plurals) in CRDS.items()
        for plural in plurals
        if f"{plural}.{group}" not in present
    ]
    kubectl(plane, "apply", "--server-side", "--field-manager=tests", *(a for f in files for a in ("-f", str(f))))
    deadline = time.monotonic() + timeout
    while not _established(plane, names):
        if time.monotonic() > deadline:
            raise AssertionError(f"CRDs {names} not Established in {timeout:g} s")
        time.sleep(0.1)


def _established(plane: ControlPlane, names: list[str]) -> bool:
    result = kubectl(plane, "get", "-o", "json", *(f"crd/{n}" for n in names), check=False)
    if not result:
        return False
    listed = json.loads(result)
    items = listed["items"] if listed.get("kind") == "List" else [listed]
    established = {
        i["metadata"]["name"]
        for i in items
        if any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (i.get("status") or {}).get("conditions") or []
        )
    }
    return established == set(names)


def create_namespace(plane: ControlPlane, name: str) -> None:
    """A namespace that enforces the `restricted` Pod Security Standard (every pod of the chart must pass it)."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": RESTRICTED}}
    apply_objects(plane, [namespace])


def volume_for(claim: dict[str, Any], namespace: str) -> dict[str, Any]:
    """A hostPath PersistentVolume made for one claim: its size, access modes and class, pre-bound to it.

    The sandbox has no provisioner (and kind's local-path one is not here): a test creates the volume the claim
    waits for, as an administrator would on a cluster without dynamic provisioning. The claimRef keeps a
    volume for its own namespace's claim when several releases run side by side.
    """
    spec = claim["spec"]
    name = f"{namespace}-{claim['metadata']['name']}"
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"mlplatform.io/test-volume": namespace}},
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec["accessModes"],
            # a claim without a class gets the default one (DefaultStorageClass admission)
            "storageClassName": spec.get("storageClassName") or STORAGE_CLASS,
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": f"/var/lib/mlplatform-test/{name}", "type": "DirectoryOrCreate"},
            "claimRef": {"namespace": namespace, "name": claim["metadata"]["name"]},
        },
    }


#: The ReadWriteMany claim TrainJob pods mount (the chart's distributedTraining.sharedClaim.name).
SHARED_CLAIM = "training-shared"


def create_shared_claim(plane: ControlPlane, namespace: str, name: str = SHARED_CLAIM) -> None:
    """The shared ReadWriteMany claim a TrainJob's pods mount, bound to a volume made for it (`volume_for`)."""
    prepare(plane)
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": STORAGE_CLASS,
        },
    }
    apply_objects(plane, [claim, volume_for(claim, namespace)])


def create_storage_secrets(plane: ControlPlane, rendered: list[dict[str, Any]], namespace: str) -> list[str]:
    """The S3 credentials Secrets the chart's ServiceAccounts list (fraudDetector.storage.existingSecret), made as
    scripts/cluster.sh makes them (annotated for KServe). KServe's pod mutator reads them when it injects the storage
    initializer and refuses the predictor's pod while one is missing, as it would on any cluster."""
    names = sorted({s["name"] for d in rendered if d["kind"] == "ServiceAccount" for s in d.get("secrets") or []})
    secrets = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "annotations": {
                    "serving.kserve.io/s3-endpoint": "minio.mlplatform-deps.svc.cluster.local:9000",
                    "serving.kserve.io/s3-usehttps": "0",
                    "serving.kserve.io/s3-region": "us-east-1",
                },
            },
            "stringData": {"AWS_ACCESS_KEY_ID": "mlplatform", "AWS_SECRET_ACCESS_KEY": "not-a-real-key"},
        }
        for name in names
    ]
    if secrets:
        apply_objects(plane, secrets)
    return names


def apply_inference_service(plane: ControlPlane, namespace: str) -> None:
    """The chart's InferenceService, ServingRuntime and ServiceAccount (default profile, model version 3) applied
    in a fresh namespace without the rest of the release: what a test or benchmark of a version change starts from."""
    ensure_namespace(plane, namespace)
    docs = kube.objects(kube.helm_template("default", kube.WITH_MODEL))
    objects = [
        {**d, "metadata": {**d["metadata"], "namespace": namespace}}
        for d in docs
        if d["kind"] in ("InferenceService", "ServingRuntime", "ServiceAccount")
    ]
    apply_objects(plane, objects)


def create_volumes(plane: ControlPlane, rendered: list[dict[str, Any]], namespace: str) -> list[str]:
    """A PersistentVolume for each claim the chart creates (see `volume_for`); their names."""
    volumes = [volume_for(d, namespace) for d in rendered if d["kind"] == "PersistentVolumeClaim"]
    if volumes:
        apply_objects(plane, volumes)
    return [v["metadata"]["name"] for v in volumes]


def release_objects(plane: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    """The objects of the release's current revision as Helm recorded them (`helm get manifest`), hooks excluded."""
    return kube.objects(helm(plane, "get", "manifest", RELEASE, "-n", namespace).stdout)


def live_objects(plane: ControlPlane, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The live objects for rendered ones (each names its namespace), in the same order (one `kubectl get -f -`)."""
    text = yaml.safe_dump_all(objects)
    listed = json.loads(kubectl(plane, "get", "-o", "json", "-f", "-", stdin=text))
    return listed["items"] if listed.get("kind") == "List" else [listed]


def deployment_ready(deployment: Any) -> bool:
    """Rolled out and Available: the controller saw this generation, every replica updated and available."""
    status, want = deployment.status, deployment.spec.replicas or 0
    if status is None or (status.observed_generation or 0) < deployment.metadata.generation:
        return False
    available = any(c.type == "Available" and c.status == "True" for c in status.conditions or [])
    return available and status.updated_replicas == want and status.available_replicas == want


def workloads_ready(api: client.ApiClient, namespace: str, deployments: set[str], claims: set[str]) -> bool:
    """Every named Deployment ready (`deployment_ready`) and every named claim Bound."""
    listed = client.AppsV1Api(api).list_namespaced_deployment(namespace, _request_timeout=10).items
    ready = {d.metadata.name for d in listed if deployment_ready(d)}
    if not deployments <= ready:
        return False
    if claims:
        pvcs = client.CoreV1Api(api).list_namespaced_persistent_volume_claim(namespace, _request_timeout=10).items
        bound = {c.metadata.name for c in pvcs if c.status and c.status.phase == "Bound"}
        return claims <= bound
    return True


def wait_ready(
    plane: ControlPlane, namespace: str, objects: list[dict[str, Any]], timeout: float = 120, interval: float = 0.05
) -> None:
    """Poll until the release's Deployments are ready and its claims Bound; AssertionError with their state if not."""
    deployments = {d["metadata"]["name"] for d in objects if d["kind"] == "Deployment"}
    claims = {d["metadata"]["name"] for d in objects if d["kind"] == "PersistentVolumeClaim"}
    api = api_client(plane)
    try:
        deadline = time.monotonic() + timeout
        while not workloads_ready(api, namespace, deployments, claims):
            if time.monotonic() > deadline:
                state = kubectl(plane, "get", "deployments,pods,pvc", "-n", namespace, "-o", "wide", check=False)
                events = kubectl(plane, "get", "events", "-n", namespace, check=False)
                raise AssertionError(f"workloads of {namespace} not ready in {timeout:g} s:\n{state}\n{events}")
            time.sleep(interval)
    finally:
        api.close()


@dataclass(frozen=True)
class Installed:
    """One release installed and ready.

    Attributes:
        profile: The chart profile (kube.PROFILES).
        namespace: Where it is installed.
        with_model: Whether a model version was passed (kube.WITH_MODEL): the InferenceService and what needs it.
        seconds_to_ready: From `helm install` starting to every Deployment Available and every claim Bound.
        helm_seconds: How long `helm install` itself ran (it does not wait: `seconds_to_ready` covers the rollout).
        objects: The release's objects as Helm recorded them (hooks excluded).
        volumes: The PersistentVolumes made for its claims (`volume_for`).
    """

    profile: str
    namespace: str
    with_model: bool
    seconds_to_ready: float
    helm_seconds: float
    objects: list[dict[str, Any]] = field(repr=False)
    volumes: list[str] = field(default_factory=list)

    @property
    def deployments(self) -> list[str]:
        return sorted(d["metadata"]["name"] for d in self.objects if d["kind"] == "Deployment")


def install(
    plane: ControlPlane, profile: str, namespace: str, *values: dict[str, Any], with_model: bool | None = None
) -> Installed:
    """`helm install` a profile into a new restricted namespace (volumes for its claims first) and time the rollout.

    The clock starts when `helm install` starts and stops when every Deployment of the release is Available and
    every claim Bound, polled every 50 ms (helm's own `--wait` polls every 2 s, too coarse for a timing).
    """
    with_model = PROFILE_MODEL[profile] if with_model is None else with_model
    layers = ((kube.WITH_MODEL,) if with_model else ()) + values
    rendered = kube.objects(kube.helm_template(profile, *layers))
    create_namespace(plane, namespace)
    create_storage_secrets(plane, rendered, namespace)
    volumes = create_volumes(plane, rendered, namespace)
    with values_file(*layers) as extra:
        began = time.monotonic()
        helm(plane, "install", RELEASE, str(kube.CHART), "-n", namespace, *profile_args(profile), *extra)
        helm_seconds = time.monotonic() - began
        wait_ready(plane, namespace, rendered)
        seconds = time.monotonic() - began
    objects = release_objects(plane, namespace)
    return Installed(profile, namespace, with_model, seconds, helm_seconds, objects, volumes)


def uninstall(plane: ControlPlane, namespace: str, volumes: Sequence[str] = ()) -> str:
    """`helm uninstall --wait`, then remove what it keeps by design (the claims) and the test's volumes."""
    out = helm(plane, "uninstall", RELEASE, "-n", namespace, "--wait", "--timeout=60s").stdout
    kubectl(plane, "delete", "pvc", "--all", "-n", namespace, "--wait=false", check=False)
    for volume in volumes:
        kubectl(plane, "delete", "pv", volume, "--wait=false", check=False)
    kubectl(plane, "delete", "namespace", namespace, "--wait=false", check=False)
    return out


def time_install(plane: ControlPlane, profile: str, with_model: bool | None = None) -> Installed:
    """Seconds from `helm install` to every workload of a profile ready, on this control plane; for benchmarks.

    Prepares the cluster (`prepare`), installs into a fresh namespace, measures, uninstalls. The figure is the
    control plane's work (API server, controllers, scheduler, kwok) plus Helm's, not image pulls or start-up.
    """
    prepare(plane)
    namespace = f"bench-{profile}-{uuid.uuid4().hex[:6]}"
    installed = install(plane, profile, namespace, with_model=with_model)
    uninstall(plane, namespace, installed.volumes)
    return installed


def pruned_fields(rendered: Any, live: Any, path: str = "") -> list[str]:
    """Paths of what was rendered but is not in the live object (dropped, or changed by the API server).

    The live object may hold more (defaults, status); lists must keep their length and order.
    """
    if isinstance(rendered, dict):
        if not isinstance(live, dict):
            return [f"{path}: {live!r} is not an object"]
        return [p for k, v in rendered.items() for p in pruned_fields(v, live.get(k, _MISSING), f"{path}.{k}")]
    if isinstance(rendered, list):
        if not isinstance(live, list) or len(live) != len(rendered):
            return [f"{path}: {rendered!r} became {live!r}"]
        return [
            p for i, (r, v) in enumerate(zip(rendered, live, strict=True)) for p in pruned_fields(r, v, f"{path}[{i}]")
        ]
    if live is _MISSING:
        return [f"{path}: missing"]
    if rendered != live and str(rendered) != str(live):
        return [f"{path}: {rendered!r} became {live!r}"]
    return []


_MISSING = object()


def chart_copy(tmp_path: Path) -> Path:
    """A copy of the chart to change in a test (a later chart version, say)."""
    target = tmp_path / "mlplatform"
    subprocess.run(["cp", "-r", str(kube.CHART), str(target)], check=True)
    return target
