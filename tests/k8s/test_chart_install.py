"""The chart installed for real: `helm install|upgrade|rollback|test|uninstall` (pinned Helm) on the sandbox's API
server, and the kustomize overlays applied with a server-side dry run.

Each profile goes into its own namespace, which enforces the `restricted` Pod Security Standard, and is uninstalled
before the next (the kind profile writes a ConfigMap into namespace kubeflow, which two releases cannot share).
Nothing provisions volumes here: the tests create the PersistentVolumes the prediction-log claims bind to
(tests/k8s/helm_cluster.py `volume_for`). No container runs: the `helm test` pod is created and scheduled but
never runs its checks, and no KServe controller turns the InferenceService into pods.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from mlplatform.deploy.inferenceservice import ServiceSpec, apply, render
from scripts.kube.sandbox import ControlPlane
from tests.k8s import helm_cluster as hc
from tests.k8s import kube
from tests.k8s.cluster import apply_objects, eventually, get_json, kubectl

pytestmark = [pytest.mark.k8s, pytest.mark.cluster]

ISVC = "fraud-detector"
CLAIM = "mlplatform-prediction-log"
CPU_WORKER = "mlplatform-worker"


@pytest.fixture(scope="module")
def platform(cluster: ControlPlane) -> ControlPlane:
    """The sandbox with what the chart needs installed first: KServe and Prometheus Operator CRDs, storage."""
    hc.prepare(cluster)
    return cluster


# --- 1. every profile installs, rolls out, and creates its `helm test` pod ---------------------------------


def _expects_test_hook(profile: str) -> bool:
    docs = kube.objects(kube.helm_template(profile, *((kube.WITH_MODEL,) if hc.PROFILE_MODEL[profile] else ())))
    return any((d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test" for d in docs)


@pytest.mark.parametrize("profile", list(kube.PROFILES))
def test_every_profile_installs_and_its_deployments_become_available(
    platform: ControlPlane, profile: str, record_property: Any
) -> None:
    namespace = f"mlp-{profile}"
    installed = hc.install(platform, profile, namespace)
    try:
        record_property("seconds_to_ready", round(installed.seconds_to_ready, 2))
        print(
            f"\n{profile}: ready {installed.seconds_to_ready:.2f} s after `helm install` started "
            f"(helm itself {installed.helm_seconds:.2f} s), deployments {installed.deployments}"
        )
        assert installed.deployments, "every profile runs at least MLflow"

        # every object the chart rendered is on the server as rendered: nothing refused, nothing pruned
        live = hc.live_objects(platform, installed.objects)
        assert len(live) == len(installed.objects)
        for rendered, obj in zip(installed.objects, live, strict=True):
            assert (obj["kind"], obj["metadata"]["name"]) == (rendered["kind"], rendered["metadata"]["name"])
            assert hc.pruned_fields(rendered, obj) == [], f"{rendered['kind']}/{rendered['metadata']['name']}"

        # the pods passed the restricted Pod Security admission and run on the CPU worker (not the GPU one)
        pods = get_json(platform, "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={hc.RELEASE}")["items"]
        assert pods and {p["status"]["phase"] for p in pods} == {"Running"}
        assert {p["spec"]["nodeName"] for p in pods} == {CPU_WORKER}

        if installed.with_model:
            claim = get_json(platform, f"pvc/{CLAIM}", "-n", namespace)
            assert claim["status"]["phase"] == "Bound"
            # collocated (the chart's default layout): the transformer is the predictor pods' second container
            predictor = get_json(platform, f"inferenceservice/{ISVC}", "-n", namespace)["spec"]["predictor"]
            assert [c["name"] for c in predictor["containers"]] == ["transformer-container"]

        _check_helm_test_pod(platform, namespace, expected=_expects_test_hook(profile))
    finally:
        hc.uninstall(platform, namespace, installed.volumes)


def _check_helm_test_pod(plane: ControlPlane, namespace: str, expected: bool) -> None:
    """`helm test` creates its hook pod and the scheduler places it; it cannot pass here (no container runs)."""
    result = hc.helm(plane, "test", hc.RELEASE, "-n", namespace, "--timeout=1s", check=False)
    if not expected:  # the profile turns the hook off (minimal): nothing to run
        assert result.returncode == 0 and "TEST SUITE: None" in result.stdout, result.stdout
        assert get_json(plane, "pod", "-n", namespace, "-l", "app.kubernetes.io/component=test")["items"] == []
        return
    # The pod stays Running (kwok) until helm gives up: the check's result is unknown, and says so.
    assert result.returncode != 0 and "timed out waiting for the condition" in result.stderr, result.stderr

    def scheduled() -> dict[str, Any] | None:
        pods = get_json(plane, "pod", "-n", namespace, "-l", "app.kubernetes.io/component=test")["items"]
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        conditions = pods[0].get("status", {}).get("conditions", [])
        return pods[0] if any(c["type"] == "PodScheduled" and c["status"] == "True" for c in conditions) else None

    pod = eventually(scheduled, "the helm test pod scheduled")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["nodeName"] == CPU_WORKER
    assert pod["status"]["phase"] != "Succeeded"


# --- 2. upgrade after a rollout, rollback, uninstall (docs/install.md A.4) -----------------------------------


def _model_args(version: str) -> list[str]:
    """The champion flags docs/install.md A.4 passes to `helm upgrade`."""
    return [
        "--set-string",
        f"fraudDetector.model.version={version}",
        "--set",
        f"fraudDetector.model.storageUri={_uri(version)}",
    ]


def _uri(version: str) -> str:
    return f"s3://mlflow/1/run{version}/artifacts/model"


def _runner_client(plane: ControlPlane, namespace: str) -> client.ApiClient:
    """An API client as the pipeline runner's ServiceAccount: what the deploy step and rollouts run as."""
    token = kubectl(plane, "create", "token", "mlplatform-pipeline-runner", "-n", namespace, "--duration=10m").strip()
    config = client.Configuration(host=plane.server)
    config.ssl_ca_cert = str(plane.pki / "ca.crt")
    config.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(config)


def _rollout(plane: ControlPlane, namespace: str, version: str) -> dict[str, Any]:
    """What a rollout does to the chart's InferenceService: a canary step, then promotion (server-side apply)."""
    api = _runner_client(plane, namespace)
    try:
        spec = ServiceSpec(ISVC, namespace, ISVC, version, _uri(version), canary_traffic_percent=10, role="canary")
        apply(render(spec), api)
        promoted = ServiceSpec(ISVC, namespace, ISVC, version, _uri(version))
        return apply(render(promoted), api)
    finally:
        api.close()


def _served(plane: ControlPlane, namespace: str) -> dict[str, Any]:
    """The version fields of the live InferenceService (what a rollout sets)."""
    obj = get_json(plane, f"inferenceservice/{ISVC}", "-n", namespace)
    model = obj["spec"]["predictor"]["model"]
    return {
        "storageUri": model["storageUri"],
        "annotation": obj["metadata"]["annotations"]["mlplatform.io/model-version"],
        "env": {e["name"]: e["value"] for e in model["env"]}["MLPLATFORM_SERVING_MODEL_VERSION"],
        "canaryTrafficPercent": obj["spec"]["predictor"].get("canaryTrafficPercent"),
    }


def _version_fields(version: str) -> dict[str, Any]:
    return {"storageUri": _uri(version), "annotation": version, "env": version, "canaryTrafficPercent": None}


def _release_isvc(plane: ControlPlane, namespace: str) -> dict[str, Any]:
    return kube.find(hc.release_objects(plane, namespace), "InferenceService")


@pytest.fixture
def promoted(platform: ControlPlane) -> Iterator[str]:
    """The production profile installed (B.6), the InferenceService enabled with version 1 by the A.4 command
    (revision 2), and version 2 rolled out and promoted by the platform (server-side apply as the runner)."""
    namespace = f"mlp-up-{uuid.uuid4().hex[:6]}"
    hc.create_namespace(platform, namespace)
    rendered = kube.objects(kube.helm_template("production", kube.WITH_MODEL))
    volumes = hc.create_volumes(platform, rendered, namespace)
    try:
        production = hc.profile_args("production")
        hc.helm(platform, "install", hc.RELEASE, str(kube.CHART), "-n", namespace, *production)
        a4 = ["--reuse-values", "--set", "fraudDetector.enabled=true", *_model_args("1")]
        _upgrade(platform, namespace, *a4)
        assert _served(platform, namespace) == _version_fields("1")
        live = _rollout(platform, namespace, "2")
        assert live["spec"]["predictor"]["model"]["storageUri"] == _uri("2")
        assert _served(platform, namespace) == _version_fields("2")
        yield namespace
    finally:
        hc.uninstall(platform, namespace, volumes)


def _upgrade(plane: ControlPlane, namespace: str, *args: str, chart: Path = kube.CHART) -> None:
    hc.helm(plane, "upgrade", hc.RELEASE, str(chart), "-n", namespace, *args, "--wait", "--timeout=60s")


def test_the_rollout_runs_as_the_pipeline_runner_and_helm_keeps_ownership_of_the_rest(
    platform: ControlPlane, promoted: str
) -> None:
    """The runner's Role (get, patch on this one InferenceService) is enough for the rollout; the fields it applied
    are owned by field manager `mlplatform`, the rest (transformer, claim, accounts) stays Helm's."""
    obj = get_json(platform, f"inferenceservice/{ISVC}", "-n", promoted, "--show-managed-fields")
    managers = {m["manager"]: m for m in obj["metadata"]["managedFields"]}
    mlplatform = managers["mlplatform"]
    assert mlplatform["operation"] == "Apply"
    owned = json.dumps(mlplatform["fieldsV1"])
    assert "f:storageUri" in owned and "f:canaryTrafficPercent" not in owned
    assert "f:containers" not in owned  # the collocated transformer is the chart's
    assert managers["helm"]["operation"] == "Update"
    helm_owned = managers["helm"]["fieldsV1"]["f:spec"]["f:predictor"]
    assert "f:containers" in helm_owned and "f:volumes" in helm_owned
    # the runner may not touch anything else
    runner = "--as=system:serviceaccount:" + promoted + ":mlplatform-pipeline-runner"
    assert (
        kubectl(platform, "auth", "can-i", "create", "inferenceservices", "-n", promoted, runner, check=False).strip()
        == "no"
    )
    assert (
        kubectl(platform, "auth", "can-i", "patch", "deployments", "-n", promoted, runner, check=False).strip() == "no"
    )


def test_a_helm_upgrade_without_the_champion_flags_patches_only_what_the_chart_changed(
    platform: ControlPlane, promoted: str
) -> None:
    """Helm 3 patches a custom resource with the difference between the release's previous rendering and the new
    one, without reading the live object: an upgrade that does not change the version fields leaves the promoted
    champion in place, even when it changes other fields of the InferenceService, but the release still records
    version 1."""
    _upgrade(platform, promoted, "--reuse-values")
    assert _served(platform, promoted) == _version_fields("2")
    _upgrade(platform, promoted, "--reuse-values", "--set", "fraudDetector.predictor.maxReplicas=4")
    live = get_json(platform, f"inferenceservice/{ISVC}", "-n", promoted)
    assert live["spec"]["predictor"]["maxReplicas"] == 4
    assert _served(platform, promoted) == _version_fields("2")
    values = yaml.safe_load(hc.helm(platform, "get", "values", hc.RELEASE, "-n", promoted).stdout)
    assert values["fraudDetector"]["model"] == {"version": "1", "storageUri": _uri("1")}


def test_a_chart_change_to_the_predictor_without_the_champion_flags_puts_the_old_version_back(
    platform: ControlPlane, promoted: str, tmp_path: Path
) -> None:
    """A later chart version that adds an environment variable to the predictor: the env list is replaced whole
    by the release's rendering, so MLPLATFORM_SERVING_MODEL_VERSION goes back to 1 while storageUri stays at
    version 2: the champion's metrics and prediction log carry the wrong version."""
    chart = _chart_with_predictor_env(tmp_path)
    _upgrade(platform, promoted, "--reuse-values", chart=chart)
    served = _served(platform, promoted)
    assert served["env"] == "1" and served != _version_fields("2")
    # storageUri and the annotation (a map, merged key by key) were not re-rendered: they stay at version 2
    assert served["storageUri"] == _uri("2") and served["annotation"] == "2"


def test_a_helm_upgrade_with_the_champion_flags_keeps_the_promoted_champion(
    platform: ControlPlane, promoted: str, tmp_path: Path
) -> None:
    """docs/install.md A.4: with the current champion passed, the same chart change keeps version 2 everywhere and
    the live object is what the chart renders for it."""
    chart = _chart_with_predictor_env(tmp_path)
    _upgrade(platform, promoted, "--reuse-values", *_model_args("2"), chart=chart)
    assert _served(platform, promoted) == _version_fields("2")
    live = get_json(platform, f"inferenceservice/{ISVC}", "-n", promoted)
    assert hc.pruned_fields(_release_isvc(platform, promoted), live) == []
    env = {e["name"] for e in live["spec"]["predictor"]["model"]["env"]}
    assert "MLPLATFORM_SERVING_LOG_LEVEL" in env
    # and the next rollout still applies on top of it
    _rollout(platform, promoted, "3")
    assert _served(platform, promoted) == _version_fields("3")


def test_helm_rollback_restores_the_version_of_the_revision_it_returns_to(
    platform: ControlPlane, promoted: str
) -> None:
    """Revision 3 records the champion (version 2); rolling back to revision 2 (version 1) puts version 1 back.
    `helm rollback` returns to a release, whatever model it served; `mlplatform rollout rollback` is the model's."""
    _upgrade(platform, promoted, "--reuse-values", *_model_args("2"))
    hc.helm(platform, "rollback", hc.RELEASE, "2", "-n", promoted, "--wait", "--timeout=60s")
    assert _served(platform, promoted) == _version_fields("1")
    hc.helm(platform, "rollback", hc.RELEASE, "3", "-n", promoted, "--wait", "--timeout=60s")
    assert _served(platform, promoted) == _version_fields("2")
    history = json.loads(hc.helm(platform, "history", hc.RELEASE, "-n", promoted, "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2, 3, 4, 5] and history[-1]["status"] == "deployed"


def test_helm_uninstall_keeps_the_prediction_log_claim_and_a_reinstall_takes_it_over(
    platform: ControlPlane, promoted: str
) -> None:
    """The claim carries `helm.sh/resource-policy: keep`: uninstall removes everything else and leaves the claim
    Bound to its volume (the log survives); installing the release again in the namespace adopts it."""
    volume = get_json(platform, f"pvc/{CLAIM}", "-n", promoted)["spec"]["volumeName"]
    out = hc.helm(platform, "uninstall", hc.RELEASE, "-n", promoted, "--wait", "--timeout=60s").stdout
    assert "These resources were kept due to the resource policy" in out and f"[PersistentVolumeClaim] {CLAIM}" in out
    claim = get_json(platform, f"pvc/{CLAIM}", "-n", promoted)
    assert claim["status"]["phase"] == "Bound" and claim["spec"]["volumeName"] == volume
    assert claim["metadata"].get("deletionTimestamp") is None
    # KServe's and Knative's objects (Knative Services, revisions' Deployments) go with the InferenceService they
    # are owned by: the garbage collector removes them shortly after
    eventually(
        lambda: (
            not kubectl(
                platform, "get", "deployments,inferenceservices,servingruntimes,ksvc", "-n", promoted, "-o", "name"
            ).strip()
        ),
        "the release's workloads and what KServe made of them gone",
    )
    hc.helm(
        platform,
        "install",
        hc.RELEASE,
        str(kube.CHART),
        "-n",
        promoted,
        *hc.profile_args("production"),
        "--set",
        "fraudDetector.enabled=true",
        *_model_args("2"),
    )
    hc.wait_ready(platform, promoted, hc.release_objects(platform, promoted))
    claim = get_json(platform, f"pvc/{CLAIM}", "-n", promoted)
    assert claim["spec"]["volumeName"] == volume
    assert claim["metadata"]["annotations"]["meta.helm.sh/release-name"] == hc.RELEASE


def _chart_with_predictor_env(tmp_path: Path) -> Path:
    """The chart as a later version might be: one more environment variable on the predictor."""
    chart = hc.chart_copy(tmp_path)
    template = chart / "templates" / "fraud-detector.yaml"
    text = template.read_text()
    anchor = "        - name: MLPLATFORM_SERVING_ROLE\n          value: {{ $fd.role | quote }}\n"
    assert text.count(anchor) == 1
    template.write_text(
        text.replace(anchor, anchor + "        - name: MLPLATFORM_SERVING_LOG_LEVEL\n          value: info\n")
    )
    return chart


# --- 3. the kustomize overlays on the server (kubectl apply --server-side --dry-run=server) ------------------


def _build(path: str) -> list[dict[str, Any]]:
    return kube.objects(kube.run(kube.tool("kustomize"), "build", str(kube.ROOT / path)).stdout)


def _dry_run(plane: ControlPlane, objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Server-side apply, dry run: the objects as the API server would store them (defaults set), by kind and name."""
    text = yaml.safe_dump_all(objects)
    out = kubectl(
        plane,
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=kubectl",
        "-o",
        "json",
        "-f",
        "-",
        stdin=text,
    )
    listed = json.loads(out)
    items = listed["items"] if listed.get("kind") == "List" else [listed]
    return {(d["kind"], d["metadata"]["name"]): d for d in items}


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """An object as stored, without what differs by installer or by request (uid, times, managers, chart label)."""
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    for key in ("uid", "creationTimestamp", "managedFields", "resourceVersion", "generation"):
        meta.pop(key, None)
    template = obj.get("spec", {}).get("template", {}) if obj["kind"] == "Deployment" else {}
    for labels in (meta.get("labels", {}), template.get("metadata", {}).get("labels", {})):
        labels.pop("helm.sh/chart", None)
        labels.pop("app.kubernetes.io/managed-by", None)
    obj.pop("status", None)
    return obj


@pytest.mark.parametrize("env", ["kind", "production"])
def test_overlays_are_accepted_by_the_api_server_in_the_mlplatform_namespace(platform: ControlPlane, env: str) -> None:
    """`kubectl apply -k manifests/overlays/<env>`: every object passes the real API server (dry run), and every
    namespaced one lands in mlplatform, where the release's pods and Secrets are, except on kind the steps'
    settings, which go where standalone Kubeflow Pipelines runs the steps (kubeflow), as with the kind profile."""
    objects = _build(f"manifests/overlays/{env}")
    # a dry run creates nothing, so the namespace the other objects go into is applied for real first
    apply_objects(platform, [d for d in objects if d["kind"] == "Namespace"])
    stored = _dry_run(platform, objects)
    assert len(stored) == len(objects)
    namespaced = {k: d["metadata"].get("namespace") for k, d in stored.items() if k[0] != "Namespace"}
    elsewhere = {("ConfigMap", "mlplatform-pipeline-settings"): "kubeflow"} if env == "kind" else {}
    assert {k: ns for k, ns in namespaced.items() if ns != kube.NAMESPACE} == elsewhere


@pytest.mark.parametrize("env", ["kind", "production"])
def test_overlays_monitoring_objects_are_stored_as_the_helm_profile_stores_them(
    platform: ControlPlane, env: str
) -> None:
    """The monitoring component (manifests/components/monitoring) with the overlay's patches equals, after the API
    server's defaulting, what `helm install -f profiles/<env>-values.yaml` creates (tests/k8s/test_kustomize.py
    compares the files; this compares the stored objects); the production PodDisruptionBudgets likewise."""
    component = {(d["kind"], d["metadata"]["name"]) for d in _build("manifests/components/monitoring")}
    if env == "production":
        component |= {
            ("PodDisruptionBudget", "mlplatform-mlflow"),
            ("PodDisruptionBudget", "mlplatform-feature-server"),
        }
    overlay = [d for d in _build(f"manifests/overlays/{env}") if (d["kind"], d["metadata"]["name"]) in component]
    no_hooks = {"tests": {"enabled": False}}
    chart = kube.objects(kube.helm_template(env, kube.WITH_MODEL, no_hooks))
    chart = [d for d in chart if (d["kind"], d["metadata"]["name"]) in component]
    apply_objects(platform, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": kube.NAMESPACE}}])
    from_overlay, from_chart = _dry_run(platform, overlay), _dry_run(platform, chart)
    assert set(from_overlay) == set(from_chart) == component
    for key in sorted(component):
        if key[0] == "PodDisruptionBudget":  # pdb.yaml labels it part-of only: the spec and namespace must agree
            assert from_overlay[key]["spec"] == from_chart[key]["spec"], key
            assert from_overlay[key]["metadata"]["namespace"] == from_chart[key]["metadata"]["namespace"], key
            continue
        assert _comparable(from_overlay[key]) == _comparable(from_chart[key]), key


def test_the_installs_are_timed_by_a_reusable_function(platform: ControlPlane) -> None:
    """`helm_cluster.time_install` gives a benchmark the same figure as the install test (and cleans up)."""
    timed = hc.time_install(platform, "minimal")
    assert 0 < timed.helm_seconds <= timed.seconds_to_ready < 60
    assert timed.deployments == ["mlplatform-mlflow"]
    releases = json.loads(hc.helm(platform, "list", "-A", "-o", "json").stdout)
    assert timed.namespace not in {r["namespace"] for r in releases}
