"""The cluster rollout backend against a stand-in of the Kubernetes API that behaves like KServe's traffic split.

No API server or KServe can run here (no container engine), so a small HTTP stand-in keeps the
InferenceService, starting from the one the chart renders (production profile: persistent prediction log,
Redis password from a Secret), merges each apply like server-side apply does for one field manager (the
fields it sets replace those values, lists whole; a field it set before and leaves out now is removed),
creates a new predictor revision when the predictor's model changes, and reports the split the way
KServe's status does (latest revision gets canaryTrafficPercent, the previous rolled-out one the rest;
without the field the latest gets everything). The merged InferenceService is validated against the
KServe CRD schema after every apply. The artifact download (MLflow) is replaced by a no-op here: it is
exercised by tests/e2e/test_rollout_local.py.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from mlplatform.deploy.cluster import deploy
from mlplatform.deploy.inferenceservice import NotInstalled
from mlplatform.registry import RegisteredVersion
from mlplatform.rollout.analysis import StepEvidence
from mlplatform.rollout.backends import ClusterBackend
from mlplatform.rollout.controller import Controller, RolloutError
from mlplatform.rollout.settings import CanarySettings
from mlplatform.settings import PlatformSettings
from tests.k8s import kube
from tests.k8s.crd import validate_custom_resource

pytestmark = pytest.mark.k8s

NAME, NS = "fraud-detector", "mlplatform"
FieldPath = tuple[str, ...]


def _leaves(obj: dict[str, Any], prefix: FieldPath = ()) -> dict[FieldPath, Any]:
    """Field paths of an apply configuration; a list is one field (the CRD's lists are atomic)."""
    out: dict[FieldPath, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def _remove(obj: dict[str, Any], path: FieldPath) -> None:
    *parents, last = path
    for key in parents:
        obj = obj.get(key) or {}
    obj.pop(last, None)


def _set(obj: dict[str, Any], path: FieldPath, value: Any) -> None:
    *parents, last = path
    for key in parents:
        obj = obj.setdefault(key, {})
    obj[last] = copy.deepcopy(value)


class KServeStandIn(BaseHTTPRequestHandler):
    obj: dict[str, Any] = {}
    owned: dict[FieldPath, Any] = {}  # the fields field manager "mlplatform" applied last
    applied: list[dict[str, Any]] = []
    revisions: list[str] = []
    rolled_out: list[str] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, obj: dict[str, Any], status: int = 200) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    @classmethod
    def install(cls, chart_object: dict[str, Any]) -> None:
        """The chart's InferenceService, as `helm install` creates it: one rolled-out revision."""
        cls.obj, cls.owned = copy.deepcopy(chart_object), {}
        cls.revisions.append(f"{NAME}-predictor-00001")
        cls._status(cls.obj.get("metadata", {}).get("generation", 0) + 1)

    @classmethod
    def server_side_apply(cls, manifest: dict[str, Any]) -> None:
        old_model = copy.deepcopy(cls.obj["spec"]["predictor"]["model"])
        fields = _leaves(manifest)
        for path in cls.owned.keys() - fields.keys():
            _remove(cls.obj, path)
        for path, value in fields.items():
            _set(cls.obj, path, value)
        cls.owned = fields
        if cls.obj["spec"]["predictor"]["model"] != old_model:
            cls.revisions.append(f"{NAME}-predictor-{len(cls.revisions) + 1:05d}")
        cls._status(cls.obj["metadata"]["generation"] + 1)

    @classmethod
    def _status(cls, generation: int) -> None:
        percent = cls.obj["spec"]["predictor"].get("canaryTrafficPercent")
        latest = cls.revisions[-1]
        if percent is None:
            traffic = [{"revisionName": latest, "percent": 100, "latestRevision": True}]
            cls.rolled_out.append(latest)
        else:
            previous = cls.rolled_out[-1]
            traffic = [
                {"revisionName": latest, "percent": percent, "latestRevision": True, "tag": "latest"},
                {"revisionName": previous, "percent": 100 - percent, "latestRevision": False, "tag": "prev"},
            ]
        cls.obj["metadata"]["generation"] = generation
        cls.obj["status"] = {
            "observedGeneration": generation,
            "conditions": [{"type": "Ready", "status": "True"}],
            "components": {
                "predictor": {
                    "traffic": traffic,
                    "latestCreatedRevision": latest,
                    "latestReadyRevision": latest,
                    "latestRolledoutRevision": cls.rolled_out[-1],
                    "previousRolledoutRevision": cls.rolled_out[-2] if len(cls.rolled_out) > 1 else None,
                }
            },
        }

    def do_PATCH(self) -> None:
        manifest = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.headers["Content-Type"] == "application/apply-patch+yaml"
        assert "fieldManager=mlplatform" in self.path and "force=true" in self.path
        if not self.obj:  # the runner's Role has no `create`: applying a missing object is refused
            self._answer({"kind": "Status", "code": 403, "reason": "Forbidden"}, 403)
            return
        self.applied.append(manifest)
        self.server_side_apply(manifest)
        live = {k: v for k, v in self.obj.items() if k != "status"}
        validate_custom_resource(live)
        self._answer(self.obj)

    def do_GET(self) -> None:
        if not self.obj:
            self._answer({"kind": "Status", "code": 404, "reason": "NotFound"}, 404)
            return
        self._answer(self.obj)


def _version(v: str) -> RegisteredVersion:
    return RegisteredVersion(NAME, v, f"mlflow-artifacts:/1/run{v}/artifacts/model", f"run{v}", [], {})


def _chart_inference_service(version: str = "1") -> dict[str, Any]:
    values = {
        "fraudDetector": {"model": {"version": version, "storageUri": f"s3://mlflow/1/run{version}/artifacts/model"}}
    }
    docs = kube.objects(kube.helm_template("production", kube.WITH_MODEL, values))
    return kube.find(docs, "InferenceService")


SETTINGS = PlatformSettings(
    deploy_target="cluster",
    deploy_namespace=NS,
    registered_model_name=NAME,
    mlflow_artifacts_destination="s3://mlflow",
)
CANARY = CanarySettings(
    prometheus_url="http://prometheus.monitoring:9090",
    step_window_seconds=2,
    analysis_interval_seconds=1,
    min_requests=10,
    ready_timeout_seconds=5,
)


@pytest.fixture(scope="module")
def chart_isvc() -> dict[str, Any]:
    return _chart_inference_service()


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[client.ApiClient]:
    monkeypatch.setattr("mlplatform.rollout.backends.prepare_local", lambda settings, version: None)
    monkeypatch.setattr("mlplatform.rollout.backends.score_references", lambda settings, stable, canary: None)
    KServeStandIn.applied, KServeStandIn.revisions, KServeStandIn.rolled_out = [], [], []
    KServeStandIn.obj, KServeStandIn.owned = {}, {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), KServeStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}"))
    server.shutdown()


class Evidence:
    def __init__(self, canary_errors: float) -> None:
        self.canary_errors = canary_errors

    def begin_step(self) -> None:
        pass

    def collect(self, version: str, role: str) -> StepEvidence:
        buckets = ((0.05, 90.0), (0.5, 99.0), (1.0, 100.0), (math.inf, 100.0))
        return StepEvidence(100, self.canary_errors if role == "canary" else 0, 0.002, 0, buckets)


def _run(api: client.ApiClient, canary_errors: float, tmp_path: Path) -> Any:
    backend = ClusterBackend(SETTINGS, CANARY, _version("1"), _version("2"), api_client=api, poll_seconds=0.01)
    backend._evidence = Evidence(canary_errors)  # the Prometheus queries are tested in tests/integration
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


def _role(obj: dict[str, Any]) -> str:
    return {e["name"]: e["value"] for e in obj["spec"]["predictor"]["model"]["env"]}["MLPLATFORM_SERVING_ROLE"]


def _what_the_chart_decides(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything but the version's fields: transformer, volumes, accounts, replicas, security, labels."""
    spec = copy.deepcopy(obj["spec"])
    predictor = spec["predictor"]
    predictor.pop("canaryTrafficPercent", None)
    for key in ("storageUri", "env"):
        predictor["model"].pop(key)
    return {"spec": spec, "labels": obj["metadata"]["labels"]}


def test_cluster_rollout_patches_canary_traffic_step_by_step_and_promotes(api, chart_isvc, tmp_path: Path) -> None:
    KServeStandIn.install(chart_isvc)
    report, backend = _run(api, 0, tmp_path)
    assert report.outcome == "promoted"
    percents = [m["spec"]["predictor"].get("canaryTrafficPercent") for m in KServeStandIn.applied]
    assert percents == [10, 25, 50, None]  # promote = the field left out, so server-side apply removes it
    assert [_role(m) for m in KServeStandIn.applied] == ["canary", "canary", "canary", "stable"]
    live = KServeStandIn.obj
    assert "canaryTrafficPercent" not in live["spec"]["predictor"]
    assert live["spec"]["predictor"]["model"]["storageUri"] == "s3://mlflow/1/run2/artifacts/model"
    assert live["metadata"]["annotations"]["mlplatform.io/model-version"] == "2" and _role(live) == "stable"
    # the chart's transformer (persistent prediction log, Redis password, version "shared"), volumes and
    # security settings are untouched by the rollout
    assert _what_the_chart_decides(live) == _what_the_chart_decides(chart_isvc)
    volumes = {v["name"]: v for v in live["spec"]["transformer"]["volumes"]}
    assert "persistentVolumeClaim" in volumes["prediction-log"]
    status = backend.describe()
    assert status["latest_percent"] == 100 and status["canary_percent"] is None


def test_a_promoted_service_equals_what_the_chart_renders_for_that_version(api, chart_isvc, tmp_path: Path) -> None:
    """After promotion, `helm upgrade --set fraudDetector.model.version=2,storageUri=...` would change nothing."""
    KServeStandIn.install(chart_isvc)
    report, _ = _run(api, 0, tmp_path)
    assert report.outcome == "promoted"
    chart_v2 = _chart_inference_service("2")
    live = KServeStandIn.obj
    assert live["spec"] == chart_v2["spec"]
    assert live["metadata"]["annotations"] == chart_v2["metadata"]["annotations"]


def test_cluster_rollout_sets_canary_traffic_to_zero_on_rollback(api, chart_isvc, tmp_path: Path) -> None:
    KServeStandIn.install(chart_isvc)
    report, backend = _run(api, 50, tmp_path)
    assert report.outcome == "rolled_back"
    percents = [m["spec"]["predictor"].get("canaryTrafficPercent") for m in KServeStandIn.applied]
    assert percents == [10, 0]
    traffic = backend.describe()["traffic"]
    previous = next(t for t in traffic if not t["latestRevision"])
    assert previous["percent"] == 100 and previous["revisionName"] == KServeStandIn.revisions[0]
    assert _what_the_chart_decides(KServeStandIn.obj) == _what_the_chart_decides(chart_isvc)


def test_cluster_rollout_refuses_when_the_service_does_not_serve_the_stable_version(
    api, chart_isvc, tmp_path: Path
) -> None:
    KServeStandIn.install(chart_isvc)
    backend = ClusterBackend(SETTINGS, CANARY, _version("7"), _version("8"), api_client=api, poll_seconds=0.01)
    with pytest.raises(RolloutError, match="serves version 1, not the stable version 7"):
        backend.start_canary(10)
    assert KServeStandIn.applied == []


def test_without_the_charts_inference_service_rollout_and_deploy_name_the_helm_command(api, monkeypatch) -> None:
    """The runner may only get and patch the InferenceService: the first one is created with Helm."""
    backend = ClusterBackend(SETTINGS, CANARY, _version("1"), _version("2"), api_client=api, poll_seconds=0.01)
    helm = "helm upgrade --install mlplatform helm/mlplatform -n mlplatform"
    with pytest.raises(NotInstalled, match="fraudDetector.model.storageUri=s3://mlflow/1/run1/artifacts/model") as err:
        backend.start_canary(10)
    assert helm in str(err.value) and "fraudDetector.model.version=1" in str(err.value)
    monkeypatch.setattr("mlplatform.deploy.cluster.resolve", lambda settings, alias: _version("1"))
    monkeypatch.setattr("mlplatform.deploy.cluster.prepare_local", lambda settings, version: Path("/nonexistent"))
    with pytest.raises(NotInstalled, match="fraudDetector.model.version=1"):
        deploy(SETTINGS, "champion", api_client=api)
    assert KServeStandIn.applied == []


def test_deploy_changes_only_the_version_of_the_installed_service(api, chart_isvc, monkeypatch) -> None:
    KServeStandIn.install(chart_isvc)
    monkeypatch.setattr("mlplatform.deploy.cluster.resolve", lambda settings, alias: _version("2"))
    monkeypatch.setattr("mlplatform.deploy.cluster.prepare_local", lambda settings, version: Path("/nonexistent"))
    result = deploy(SETTINGS.model_copy(update={"deploy_ready_timeout_seconds": 5}), "champion", api_client=api)
    assert result.storage_uri == "s3://mlflow/1/run2/artifacts/model"
    assert _what_the_chart_decides(KServeStandIn.obj) == _what_the_chart_decides(chart_isvc)
    assert KServeStandIn.obj["spec"] == _chart_inference_service("2")["spec"]


def test_cluster_rollout_needs_a_prometheus_url(api) -> None:
    with pytest.raises(RolloutError, match="MLPLATFORM_CANARY_PROMETHEUS_URL"):
        ClusterBackend(SETTINGS, CanarySettings(), _version("1"), _version("2"), api_client=api)


def test_the_pipelines_first_deploy_on_a_cluster_without_the_service_says_what_to_install(api, monkeypatch) -> None:
    """The version stays registered and champion; the step succeeds and names the Helm command."""
    from components.deploy.step import run_deploy_canary

    monkeypatch.setattr("mlplatform.deploy.cluster.resolve", lambda settings, alias: _version("1"))
    monkeypatch.setattr("mlplatform.deploy.cluster.prepare_local", lambda settings, version: Path("/nonexistent"))
    monkeypatch.setattr("components.deploy.step.resolve", lambda settings, alias: _version("1"))
    monkeypatch.setattr("mlplatform.deploy.cluster.kubernetes_client", lambda: api)
    lines: list[str] = []
    outcome = run_deploy_canary(True, "1", SETTINGS, CANARY, log=lines.append)
    assert (outcome.action, outcome.version, outcome.outcome) == ("deployed", "1", "not_installed")
    assert "fraudDetector.model.version=1" in outcome.reason and "helm upgrade --install" in lines[0]
    KServeStandIn.install(_chart_inference_service("1"))
    outcome = run_deploy_canary(True, "1", SETTINGS.model_copy(update={"deploy_ready_timeout_seconds": 5}), CANARY)
    assert outcome.outcome == "deployed"
