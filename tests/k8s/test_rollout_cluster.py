"""The cluster rollout and deploy against a real API server, with KServe and Knative reconciling the chart's service.

Each release is the chart (production profile: persistent prediction log, Redis password from a Secret) `helm
install`ed with model version 1 into a fresh namespace of the sandbox (scripts/kube/sandbox.py), which enforces the
`restricted` Pod Security Standard. The rollout and deploy code run with a token of the chart's pipeline-runner
ServiceAccount, so its Role (get and patch of this one InferenceService) is shown to suffice. Every server-side
apply the code makes is recorded on its way to the API server, and after each traffic change the admin reads the
live InferenceService: the revisions and the split asserted are what KServe and Knative computed.

Real: the API server (CRD schemas, RBAC, Pod Security admission), Helm, KServe's controller and webhooks (with its
storage initializer configured as KServe's Helm chart does: sandbox.STORAGE_CONTAINER), Knative Serving's controller and
autoscaler, the scheduler. Pods are kwok's (no container runs), and the Knative ingress (Istio or Kourier) is not
there: the sandbox reports each Knative Ingress as programmed, the one status not computed by the real component.
Replaced in the code under test: the canary evidence (a stub; the Prometheus queries are tested in
tests/integration) and the artifact download (tests/e2e/test_rollout_local.py).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import shlex
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from mlplatform.deploy import inferenceservice
from mlplatform.deploy.cluster import deploy
from mlplatform.deploy.inferenceservice import (
    ANNOTATION_MODEL_VERSION,
    ANNOTATION_ROLE,
    NotInstalled,
    get,
    is_ready,
    predictor_traffic,
)
from mlplatform.rollout.analysis import StepEvidence
from mlplatform.rollout.backends import ClusterBackend
from mlplatform.rollout.controller import Controller, RolloutError
from mlplatform.rollout.settings import CanarySettings
from mlplatform.settings import PlatformSettings
from scripts.kube.sandbox import ControlPlane
from tests.k8s import helm_cluster as hc
from tests.k8s import kube
from tests.k8s.cluster import CANARY, NAME, api_client, eventually, get_json, kubectl, registered

pytestmark = [pytest.mark.k8s, pytest.mark.cluster]

RUNNER = f"{hc.RELEASE}-pipeline-runner"
#: Seconds between two status reads of the code under test (its default, 5 s, is a cluster's pace).
POLL_SECONDS = 0.1


def _uri(version: str) -> str:
    return f"s3://mlflow/1/run{version}/artifacts/model"


def _model_values(version: str, layout: str = "collocated") -> dict[str, Any]:
    return {"fraudDetector": {"layout": layout, "model": {"version": version, "storageUri": _uri(version)}}}


def _settings(namespace: str) -> PlatformSettings:
    return PlatformSettings(
        deploy_target="cluster",
        deploy_namespace=namespace,
        registered_model_name=NAME,
        mlflow_artifacts_destination="s3://mlflow",
        deploy_ready_timeout_seconds=60,
    )


# --- the cluster, the releases and the recording of what the code applies --------------------------------------


@pytest.fixture(scope="module")
def platform(cluster: ControlPlane) -> ControlPlane:
    """The sandbox with what the chart needs (CRDs, storage)."""
    hc.prepare(cluster)
    return cluster


@dataclass(frozen=True)
class Release:
    """The chart installed in its own namespace, and the clients the tests use there.

    Attributes:
        plane: The sandbox.
        namespace: Where the release is.
        settings: Platform settings pointing at it.
        runner: A client with a token of the pipeline runner's ServiceAccount: what the code under test uses.
        admin: The sandbox's admin: what the tests read the live objects with.
        before: The live InferenceService once KServe reported it Ready, before a test changed it ({} without it).
        layout: The chart's fraudDetector.layout: the transformer collocated in the predictor pods, or separate.
    """

    plane: ControlPlane
    namespace: str
    settings: PlatformSettings
    runner: client.ApiClient
    admin: client.ApiClient
    before: dict[str, Any]
    layout: str = "collocated"

    def live(self) -> dict[str, Any]:
        return get(NAME, self.namespace, self.admin)

    def transformer_pod(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The part of the InferenceService that holds the transformer's pod (containers, volumes)."""
        return obj["spec"]["predictor" if self.layout == "collocated" else "transformer"]


def _runner_client(plane: ControlPlane, namespace: str) -> client.ApiClient:
    """A client that authenticates with a token of the pipeline runner's ServiceAccount (TokenRequest)."""
    token = kubectl(plane, "create", "token", RUNNER, "-n", namespace).strip()
    configuration = client.Configuration(host=plane.server)
    configuration.ssl_ca_cert = str(plane.pki / "ca.crt")
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(configuration)


def _serving(admin: client.ApiClient, namespace: str) -> dict[str, Any]:
    """Wait until KServe reports the InferenceService Ready with its latest revision ready and at 100 %."""

    def check() -> dict[str, Any] | None:
        obj = get(NAME, namespace, admin)
        traffic = predictor_traffic(obj)
        settled = traffic.latest_ready_revision == traffic.latest_revision and traffic.latest_percent == 100
        return obj if is_ready(obj) and settled else None

    return eventually(check, f"InferenceService {namespace}/{NAME} Ready at 100 %", timeout=60, interval=POLL_SECONDS)


@contextlib.contextmanager
def _release(plane: ControlPlane, with_model: bool = True, layout: str = "collocated") -> Iterator[Release]:
    """`helm install` of the production profile into a fresh namespace (model version 1, or no InferenceService);
    uninstalled afterwards, with the namespace and every volume made for its claims."""
    namespace = f"rollout-{uuid.uuid4().hex[:6]}"
    layers = [_model_values("1", layout)] if with_model else []
    installed = None
    with contextlib.ExitStack() as clients:
        try:
            installed = hc.install(plane, "production", namespace, *layers, with_model=with_model)
            runner = clients.enter_context(contextlib.closing(_runner_client(plane, namespace)))
            admin = clients.enter_context(contextlib.closing(api_client(plane)))
            before = _serving(admin, namespace) if with_model else {}
            yield Release(plane, namespace, _settings(namespace), runner, admin, before, layout)
        finally:
            if installed is not None:
                hc.uninstall(plane, namespace)
            kubectl(plane, "delete", "namespace", namespace, "--wait=false", check=False)
            # helm_cluster.volume_for labels each volume with its namespace (a test may add one for an upgrade)
            kubectl(plane, "delete", "pv", "-l", f"mlplatform.io/test-volume={namespace}", "--wait=false", check=False)


@pytest.fixture
def release(platform: ControlPlane) -> Iterator[Release]:
    with _release(platform) as installed:
        yield installed


@pytest.fixture
def bare_release(platform: ControlPlane) -> Iterator[Release]:
    """The production profile without a model version: everything but the InferenceService (docs/install.md B.6)."""
    with _release(platform, with_model=False) as installed:
        yield installed


@dataclass
class Applied:
    """What the code under test sent and what it brought about.

    Attributes:
        manifests: Every server-side apply of the InferenceService, in order.
        settled: The live InferenceService (read by the admin) each time a change was awaited to be in force.
    """

    manifests: list[dict[str, Any]] = field(default_factory=list)
    settled: list[dict[str, Any]] = field(default_factory=list)

    @property
    def percents(self) -> list[int | None]:
        return [m["spec"]["predictor"].get("canaryTrafficPercent") for m in self.manifests]


def _record(monkeypatch: pytest.MonkeyPatch, release: Release) -> Applied:
    """Record each apply (and call through), and the live object after each `apply_and_wait` of rollout and deploy.

    The artifact download is a no-op here (tested in tests/e2e/test_rollout_local.py), and deploy's status reads
    come every POLL_SECONDS instead of its fixed 5 s.
    """
    applied = Applied()
    real_apply, real_apply_and_wait = inferenceservice.apply, inferenceservice.apply_and_wait

    def apply(manifest: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        applied.manifests.append(copy.deepcopy(manifest))
        return real_apply(manifest, *args, **kwargs)

    def apply_and_wait(*args: Any, **kwargs: Any) -> dict[str, Any]:
        call = inspect.signature(real_apply_and_wait).bind(*args, **kwargs)
        call.arguments["poll_seconds"] = POLL_SECONDS
        result = real_apply_and_wait(*call.args, **call.kwargs)
        applied.settled.append(release.live())
        return result

    monkeypatch.setattr("mlplatform.deploy.inferenceservice.apply", apply)
    monkeypatch.setattr("mlplatform.rollout.backends.apply_and_wait", apply_and_wait)
    monkeypatch.setattr("mlplatform.deploy.cluster.apply_and_wait", apply_and_wait)
    monkeypatch.setattr("mlplatform.rollout.backends.prepare_local", lambda settings, version: None)
    monkeypatch.setattr("mlplatform.rollout.backends.score_references", lambda settings, stable, canary: None)
    return applied


class Evidence:
    """Every step's evidence: healthy latency, `canary_errors` errors in 100 canary requests."""

    def __init__(self, canary_errors: float) -> None:
        self.canary_errors = canary_errors

    def begin_step(self) -> None:
        pass

    def collect(self, version: str, role: str) -> StepEvidence:
        buckets = ((0.05, 90.0), (0.5, 99.0), (1.0, 100.0), (math.inf, 100.0))
        return StepEvidence(100, self.canary_errors if role == "canary" else 0, 0.002, 0, buckets)


def _backend(release: Release, stable: str = "1", canary: str = "2", errors: float = 0) -> ClusterBackend:
    backend = ClusterBackend(
        release.settings,
        CANARY,
        registered(stable),
        registered(canary),
        api_client=release.runner,
        poll_seconds=POLL_SECONDS,
    )
    backend._evidence = Evidence(errors)  # the Prometheus queries are tested in tests/integration
    return backend


def _run(release: Release, canary_errors: float, tmp_path: Path) -> tuple[Any, ClusterBackend]:
    """The controller over the cluster backend, on a simulated clock (the step windows pass at once)."""
    backend = _backend(release, errors=canary_errors)
    clock = [0.0]
    controller = Controller(
        backend,
        CANARY,
        NAME,
        "1",
        "2",
        tmp_path,
        clock=lambda: clock[0],
        sleep=lambda s: clock.__setitem__(0, clock[0] + s),
    )
    return controller.run(), backend


# --- reading the live object ----------------------------------------------------------------------------------


def _split(obj: dict[str, Any]) -> dict[str, int]:
    """The predictor's traffic as KServe reports it: revision name -> percent."""
    return {t["revisionName"]: int(t.get("percent") or 0) for t in predictor_traffic(obj).traffic}


def _latest(obj: dict[str, Any]) -> str:
    revision = predictor_traffic(obj).latest_revision
    assert revision, f"no predictor revision in {obj.get('status')}"
    return revision


def _role(obj: dict[str, Any]) -> str:
    return {e["name"]: e["value"] for e in obj["spec"]["predictor"]["model"]["env"]}["MLPLATFORM_SERVING_ROLE"]


def _what_the_chart_decides(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything but the version's fields: transformer, volumes, accounts, replicas, security, labels, annotations."""
    spec = copy.deepcopy(obj["spec"])
    predictor = spec["predictor"]
    predictor.pop("canaryTrafficPercent", None)
    for key in ("storageUri", "env"):
        predictor["model"].pop(key)
    annotations = {
        k: v for k, v in obj["metadata"]["annotations"].items() if k not in (ANNOTATION_MODEL_VERSION, ANNOTATION_ROLE)
    }
    return {"spec": spec, "labels": obj["metadata"]["labels"], "annotations": annotations}


def _chart_inference_service(
    plane: ControlPlane, namespace: str, version: str, layout: str = "collocated"
) -> dict[str, Any]:
    """The InferenceService `helm template` renders for the release's namespace, a model version and a layout."""
    with hc.values_file(kube.WITH_MODEL, _model_values(version, layout)) as extra:
        out = hc.helm(
            plane,
            "template",
            hc.RELEASE,
            str(kube.CHART),
            "-n",
            namespace,
            "--kube-version",
            kube.KUBERNETES_VERSION,
            *hc.profile_args("production"),
            *extra,
        ).stdout
    return kube.find(kube.objects(out), "InferenceService")


# --- promotion ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Promotion:
    release: Release
    report: Any
    backend: ClusterBackend
    applied: Applied


@pytest.fixture(scope="module", params=["collocated", "separate"])
def promotion(
    platform: ControlPlane, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Promotion]:
    """Version 2 rolled out over the chart's version 1 with healthy evidence (shared by the promotion tests), in
    each layout of the chart (fraudDetector.layout): the rollout is the same code and the same steps in both."""
    with _release(platform, layout=request.param) as release:
        with pytest.MonkeyPatch.context() as monkeypatch:  # undone before the other tests of the module run
            applied = _record(monkeypatch, release)
            report, backend = _run(release, 0, tmp_path_factory.mktemp("promotion"))
        yield Promotion(release, report, backend, applied)


def test_cluster_rollout_moves_canary_traffic_step_by_step_and_promotes(promotion: Promotion) -> None:
    release, applied = promotion.release, promotion.applied
    assert promotion.report.outcome == "promoted"
    assert applied.percents == [10, 25, 50, None]  # promote = the field left out, so server-side apply removes it
    assert [_role(m) for m in applied.manifests] == ["canary", "canary", "canary", "stable"]
    # each step as KServe and Knative computed it: the canary's revision gets the step, the first one the rest
    first, canary = _latest(release.before), _latest(applied.settled[0])
    assert canary != first
    assert [_split(obj) for obj in applied.settled[:3]] == [{canary: p, first: 100 - p} for p in (10, 25, 50)]
    # the predictor relabelled stable is a new revision, which takes all the traffic
    promoted = _latest(applied.settled[3])
    assert promoted not in (first, canary)
    assert _split(applied.settled[3]) == {promoted: 100}
    assert predictor_traffic(applied.settled[3]).latest_rolled_out_revision == promoted
    # the chart's transformer (persistent prediction log, Redis password), volumes and security settings are
    # untouched by every step
    for obj in applied.settled:
        assert _what_the_chart_decides(obj) == _what_the_chart_decides(release.before)
    live = release.live()
    assert "canaryTrafficPercent" not in live["spec"]["predictor"]
    assert live["spec"]["predictor"]["model"]["storageUri"] == _uri("2")
    assert live["metadata"]["annotations"][ANNOTATION_MODEL_VERSION] == "2" and _role(live) == "stable"
    volumes = {v["name"]: v for v in release.transformer_pod(live)["volumes"]}
    assert "persistentVolumeClaim" in volumes["prediction-log"]
    status = promotion.backend.describe()
    assert status["latest_percent"] == 100 and status["canary_percent"] is None


def _revision_containers(plane: ControlPlane, namespace: str) -> dict[str, dict[str, dict[str, Any]]]:
    """Every Knative revision KServe's controller made for the predictor: revision -> container name -> container."""
    revisions = get_json(plane, "revisions.serving.knative.dev", "-n", namespace)["items"]
    return {r["metadata"]["name"]: {c["name"]: c for c in r["spec"]["containers"]} for r in revisions}


def test_each_revision_carries_its_transformer_with_the_revisions_version_and_role(promotion: Promotion) -> None:
    """Collocated, KServe's controller builds every predictor revision with the chart's transformer container
    beside the model server (KServe collocation), filling the transformer's version and role in from the
    annotations the rollout sets: the canary's transformer reports version 2 as canary, so both containers' series
    are the canary's. In separate pods, the predictor revisions hold the model server alone, and the one
    transformer reports version "shared"."""
    release, applied = promotion.release, promotion.applied
    first, canary, promoted = (_latest(o) for o in (release.before, applied.settled[0], applied.settled[3]))
    revisions = _revision_containers(release.plane, release.namespace)
    predictor_revisions = {name: c for name, c in revisions.items() if "kserve-container" in c}
    assert {first, canary, promoted} <= set(predictor_revisions)
    if release.layout == "separate":
        assert all(set(c) == {"kserve-container"} for c in predictor_revisions.values())
        (transformer,) = release.live()["spec"]["transformer"]["containers"]
        assert _env_values(transformer)["MLPLATFORM_SERVING_MODEL_VERSION"] == "shared"
        return
    expected = {first: ("1", "stable"), canary: ("2", "canary"), promoted: ("2", "stable")}
    for revision, (version, role) in expected.items():
        containers = predictor_revisions[revision]
        assert set(containers) == {"kserve-container", "transformer-container"}, revision
        for name in containers:
            env = _env_values(containers[name])
            assert (env["MLPLATFORM_SERVING_MODEL_VERSION"], env["MLPLATFORM_SERVING_ROLE"]) == (version, role)
        # the transformer owns the one port Knative routes to, and calls the model server beside it
        transformer, model_server = containers["transformer-container"], containers["kserve-container"]
        assert [p["containerPort"] for p in transformer.get("ports", [])] == [8080]
        assert not model_server.get("ports")
        assert "--predictor_host=localhost:8085" in transformer["args"] and "--http_port=8085" in model_server["args"]


def _env_values(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_a_promoted_service_equals_what_the_chart_renders_for_that_version(promotion: Promotion) -> None:
    """After promotion, `helm upgrade` with the champion flags (version 2, its storageUri) has nothing to change:
    every field the chart renders for version 2 is live as rendered, and the rollout left nothing else behind."""
    assert promotion.report.outcome == "promoted"
    release = promotion.release
    chart_v2 = _chart_inference_service(release.plane, release.namespace, "2", release.layout)
    live = release.live()
    assert hc.pruned_fields(chart_v2["spec"], live["spec"]) == []
    assert "canaryTrafficPercent" not in live["spec"]["predictor"]
    annotations = {k: v for k, v in live["metadata"]["annotations"].items() if not k.startswith("meta.helm.sh/")}
    assert annotations == chart_v2["metadata"]["annotations"]
    # beyond the chart's fields, the live object holds what KServe's defaulting added at install, nothing more
    assert _what_the_chart_decides(live) == _what_the_chart_decides(release.before)


def test_cluster_rollout_refuses_when_the_service_does_not_serve_the_stable_version(
    promotion: Promotion, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollout whose stable version is not the one served (version 2 since the promotion) changes nothing."""
    release = promotion.release
    before = release.live()
    applied = _record(monkeypatch, release)
    backend = _backend(release, stable="7", canary="8")
    with pytest.raises(RolloutError, match="serves version 2, not the stable version 7"):
        backend.start_canary(10)
    assert applied.manifests == []
    assert release.live()["metadata"]["generation"] == before["metadata"]["generation"]


# --- rollback ---------------------------------------------------------------------------------------------------


def test_cluster_rollout_sets_canary_traffic_to_zero_on_rollback(
    release: Release, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    applied = _record(monkeypatch, release)
    report, backend = _run(release, 50, tmp_path)
    assert report.outcome == "rolled_back"
    assert applied.percents == [10, 0]
    first, canary = _latest(release.before), _latest(applied.settled[0])
    assert _split(applied.settled[0]) == {canary: 10, first: 90}
    # all the traffic back on the revision that served before, as KServe reports it
    assert _split(applied.settled[1]) == {canary: 0, first: 100}
    traffic = backend.describe()["traffic"]
    previous = next(t for t in traffic if not t["latestRevision"])
    assert previous["percent"] == 100 and previous["revisionName"] == first
    for obj in applied.settled:
        assert _what_the_chart_decides(obj) == _what_the_chart_decides(release.before)


# --- without the chart's InferenceService -----------------------------------------------------------------------


def test_without_the_charts_inference_service_rollout_and_deploy_name_the_helm_command(
    bare_release: Release, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner may only get and patch the InferenceService: the first one is created with Helm."""
    release = bare_release
    applied = _record(monkeypatch, release)
    backend = _backend(release)
    helm = f"helm upgrade --install mlplatform helm/mlplatform -n {release.namespace}"
    with pytest.raises(NotInstalled, match=f"fraudDetector.model.storageUri={_uri('1')}") as err:
        backend.start_canary(10)
    assert helm in str(err.value) and "fraudDetector.model.version=1" in str(err.value)
    monkeypatch.setattr("mlplatform.deploy.cluster.resolve", lambda settings, alias: registered("1"))
    monkeypatch.setattr("mlplatform.deploy.cluster.prepare_local", lambda settings, version: Path("/nonexistent"))
    with pytest.raises(NotInstalled, match="fraudDetector.model.version=1"):
        deploy(release.settings, "champion", api_client=release.runner)
    assert applied.manifests == []


def test_the_pipelines_first_deploy_without_the_service_names_a_helm_command_that_installs_it(
    bare_release: Release, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version stays registered and champion; the step succeeds and names the Helm command, which, run as
    printed, creates the InferenceService; the next deploy then finds it."""
    from components.deploy.step import run_deploy_canary

    release = bare_release
    applied = _record(monkeypatch, release)
    monkeypatch.setattr("mlplatform.deploy.cluster.resolve", lambda settings, alias: registered("1"))
    monkeypatch.setattr("mlplatform.deploy.cluster.prepare_local", lambda settings, version: Path("/nonexistent"))
    monkeypatch.setattr("components.deploy.step.resolve", lambda settings, alias: registered("1"))
    monkeypatch.setattr("mlplatform.deploy.cluster.kubernetes_client", lambda: release.runner)
    lines: list[str] = []
    outcome = run_deploy_canary(True, "1", release.settings, CANARY, log=lines.append)
    assert (outcome.action, outcome.version, outcome.outcome) == ("deployed", "1", "not_installed")
    assert "fraudDetector.model.version=1" in outcome.reason and "helm upgrade --install" in lines[0]
    assert applied.manifests == []

    # a person runs the command (the prediction-log claim it adds gets a volume first, as an admin would provide)
    command = shlex.split(outcome.reason[outcome.reason.index("helm upgrade") :])
    rendered = kube.objects(kube.helm_template("production", kube.WITH_MODEL))
    hc.create_volumes(release.plane, rendered, release.namespace)
    hc.helm(release.plane, *command[1:])
    installed = _serving(release.admin, release.namespace)
    assert installed["metadata"]["annotations"][ANNOTATION_MODEL_VERSION] == "1"
    assert installed["spec"]["predictor"]["model"]["storageUri"] == _uri("1")

    outcome = run_deploy_canary(True, "1", release.settings, CANARY)
    assert outcome.outcome == "deployed"
    assert applied.percents == [None]
    assert _split(applied.settled[0]) == {_latest(installed): 100}


# --- deploy -------------------------------------------------------------------------------------------------------


def test_deploy_changes_only_the_version_of_the_installed_service(
    release: Release, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied = _record(monkeypatch, release)
    monkeypatch.setattr("mlplatform.deploy.cluster.resolve", lambda settings, alias: registered("2"))
    monkeypatch.setattr("mlplatform.deploy.cluster.prepare_local", lambda settings, version: Path("/nonexistent"))
    result = deploy(release.settings, "champion", api_client=release.runner)
    assert result.storage_uri == _uri("2")
    assert applied.percents == [None]
    # a new revision serves version 2 with all the traffic, as KServe reports it
    (live,) = applied.settled
    first, latest = _latest(release.before), _latest(live)
    assert latest != first and _split(live) == {latest: 100}
    assert _what_the_chart_decides(live) == _what_the_chart_decides(release.before)
    chart_v2 = _chart_inference_service(release.plane, release.namespace, "2")
    assert hc.pruned_fields(chart_v2["spec"], live["spec"]) == []


def test_cluster_rollout_needs_a_prometheus_url() -> None:
    with pytest.raises(RolloutError, match="MLPLATFORM_CANARY_PROMETHEUS_URL"):
        ClusterBackend(_settings("mlplatform"), CanarySettings(), registered("1"), registered("2"), api_client=object())
