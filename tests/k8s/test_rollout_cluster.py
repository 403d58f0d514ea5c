"""The cluster rollout backend against a stand-in of the Kubernetes API that behaves like KServe's traffic split.

No API server or KServe can run here (no container engine), so a small HTTP stand-in keeps the
InferenceService, creates a new predictor revision when the predictor's spec changes, and reports the
split the way KServe's status does (latest revision gets canaryTrafficPercent, the previous rolled-out
one the rest; without the field the latest gets everything). Every InferenceService the backend applies
is validated against the KServe CRD schema. The artifact download (MLflow) is replaced by a no-op here:
it is exercised by tests/e2e/test_rollout_local.py.
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

from mlplatform.canary import CanarySettings, StepEvidence
from mlplatform.rollout import Controller, RolloutError
from mlplatform.rollout_backends import ClusterBackend
from mlplatform.settings import PlatformSettings
from mlplatform.tracking import RegisteredVersion
from serving.inferenceservice import ServiceSpec, render
from tests.k8s.crd import validate_custom_resource

pytestmark = pytest.mark.k8s

NAME, NS = "fraud-detector", "mlplatform"


class KServeStandIn(BaseHTTPRequestHandler):
    obj: dict[str, Any] = {}
    applied: list[dict[str, Any]] = []
    revisions: list[str] = []
    rolled_out: list[str] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, obj: dict[str, Any]) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    @classmethod
    def store(cls, manifest: dict[str, Any]) -> None:
        """Keep an applied InferenceService and compute its status as KServe would."""
        old = cls.obj.get("spec", {}).get("predictor", {}).get("model")
        new = manifest["spec"]["predictor"]["model"]
        if old != new:
            cls.revisions.append(f"{NAME}-predictor-{len(cls.revisions) + 1:05d}")
        generation = cls.obj.get("metadata", {}).get("generation", 0) + 1
        percent = manifest["spec"]["predictor"].get("canaryTrafficPercent")
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
        cls.obj = {
            **copy.deepcopy(manifest),
            "metadata": {**manifest["metadata"], "generation": generation},
            "status": {
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
            },
        }

    def do_PATCH(self) -> None:
        manifest = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.headers["Content-Type"] == "application/apply-patch+yaml"
        self.applied.append(manifest)
        self.store(manifest)
        self._answer(self.obj)

    def do_GET(self) -> None:
        self._answer(self.obj)


def _version(v: str) -> RegisteredVersion:
    return RegisteredVersion(NAME, v, f"s3://mlflow/1/run{v}/artifacts/model", f"run{v}", [], {})


SETTINGS = PlatformSettings(deploy_target="cluster", deploy_namespace=NS, registered_model_name=NAME)
CANARY = CanarySettings(
    prometheus_url="http://prometheus.monitoring:9090",
    step_window_seconds=2,
    analysis_interval_seconds=1,
    min_requests=10,
    ready_timeout_seconds=5,
)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[client.ApiClient]:
    monkeypatch.setattr("mlplatform.rollout_backends.prepare_local", lambda settings, version: None)
    KServeStandIn.applied, KServeStandIn.revisions, KServeStandIn.rolled_out, KServeStandIn.obj = [], [], [], {}
    stable = render(ServiceSpec(NAME, NS, NAME, "1", _version("1").source, "img:1", "redis:6379", "feast-registry"))
    KServeStandIn.store(stable)
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
    backend = ClusterBackend(
        SETTINGS.model_copy(update={"mlflow_artifacts_destination": "s3://mlflow"}),
        CANARY,
        _version("1"),
        _version("2"),
        api_client=api,
        poll_seconds=0.01,
    )
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


def test_cluster_rollout_patches_canary_traffic_step_by_step_and_promotes(api, tmp_path: Path) -> None:
    report, backend = _run(api, 0, tmp_path)
    assert report.outcome == "promoted"
    percents = [m["spec"]["predictor"].get("canaryTrafficPercent") for m in KServeStandIn.applied]
    assert percents == [10, 25, 50, None]  # promote = the field removed
    for manifest in KServeStandIn.applied:
        validate_custom_resource(manifest)
        assert manifest["metadata"]["annotations"]["mlplatform.io/model-version"] == "2"
    roles = [
        {e["name"]: e["value"] for e in m["spec"]["predictor"]["model"]["env"]}["MLPLATFORM_SERVING_ROLE"]
        for m in KServeStandIn.applied
    ]
    assert roles == ["canary", "canary", "canary", "stable"]
    # the transformer serves both revisions: its series carry no version
    transformer_env = {
        e["name"]: e.get("value") for e in KServeStandIn.applied[0]["spec"]["transformer"]["containers"][0]["env"]
    }
    assert transformer_env["MLPLATFORM_SERVING_MODEL_VERSION"] == "shared"
    status = backend.describe()
    assert status["latest_percent"] == 100 and status["canary_percent"] is None


def test_cluster_rollout_sets_canary_traffic_to_zero_on_rollback(api, tmp_path: Path) -> None:
    report, backend = _run(api, 50, tmp_path)
    assert report.outcome == "rolled_back"
    percents = [m["spec"]["predictor"].get("canaryTrafficPercent") for m in KServeStandIn.applied]
    assert percents == [10, 0]
    for manifest in KServeStandIn.applied:
        validate_custom_resource(manifest)
    traffic = backend.describe()["traffic"]
    previous = next(t for t in traffic if not t["latestRevision"])
    assert previous["percent"] == 100 and previous["revisionName"] == KServeStandIn.revisions[0]


def test_cluster_rollout_refuses_when_the_service_does_not_serve_the_stable_version(api, tmp_path: Path) -> None:
    backend = ClusterBackend(
        SETTINGS.model_copy(update={"mlflow_artifacts_destination": "s3://mlflow"}),
        CANARY,
        _version("7"),
        _version("8"),
        api_client=api,
        poll_seconds=0.01,
    )
    with pytest.raises(RolloutError, match="serves version 1, not the stable version 7"):
        backend.start_canary(10)
    assert KServeStandIn.applied == []


def test_cluster_rollout_needs_a_prometheus_url(api) -> None:
    with pytest.raises(RolloutError, match="MLPLATFORM_CANARY_PROMETHEUS_URL"):
        ClusterBackend(SETTINGS, CanarySettings(), _version("1"), _version("2"), api_client=api)
