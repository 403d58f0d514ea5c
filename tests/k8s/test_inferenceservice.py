"""The rendered InferenceService against the KServe CRD, and server-side apply against a stand-in API.

A Kubernetes API server cannot run on this machine (no container engine), so `apply` and
`wait_ready` talk to a small HTTP stand-in that records the requests and answers like the API does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jsonschema
import pytest
from kubernetes import client

from mlplatform.deploy.artifact import storage_uri
from mlplatform.deploy.inferenceservice import ServiceSpec, apply, is_ready, render, wait_ready
from mlplatform.errors import ConfigError
from mlplatform.settings import PlatformSettings
from tests.k8s.crd import validate_custom_resource

pytestmark = pytest.mark.k8s


def _spec(**kw: Any) -> ServiceSpec:
    base = {
        "name": "fraud-detector",
        "namespace": "mlplatform",
        "model_name": "fraud-detector",
        "model_version": "4",
        "storage_uri": "s3://mlflow/1/abc/artifacts/model",
    }
    return ServiceSpec(**{**base, **kw})


@pytest.mark.parametrize(
    "spec",
    [_spec(), _spec(canary_traffic_percent=10, role="canary")],
    ids=["stable", "canary"],
)
def test_rendered_inference_service_validates_against_the_kserve_crd(spec: ServiceSpec) -> None:
    manifest = render(spec)
    validate_custom_resource(manifest)
    predictor = manifest["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == spec.storage_uri
    assert manifest["metadata"]["annotations"]["mlplatform.io/model-version"] == "4"
    assert predictor.get("canaryTrafficPercent") == spec.canary_traffic_percent


def test_a_typo_in_the_manifest_would_fail_the_schema() -> None:
    manifest = render(_spec())
    manifest["spec"]["predictor"]["model"]["storageUrl"] = manifest["spec"]["predictor"]["model"].pop("storageUri")
    with pytest.raises(jsonschema.ValidationError):
        validate_custom_resource(manifest)


def test_canary_percent_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="canary_traffic_percent"):
        render(_spec(canary_traffic_percent=150))


def test_storage_uri_maps_proxied_artifacts_and_refuses_local_paths() -> None:
    settings = PlatformSettings(mlflow_artifacts_destination="s3://mlflow")
    assert storage_uri("mlflow-artifacts:/1/abc/artifacts/model", settings) == "s3://mlflow/1/abc/artifacts/model"
    assert storage_uri("s3://bucket/m", PlatformSettings()) == "s3://bucket/m"
    with pytest.raises(ConfigError, match="MLPLATFORM_MLFLOW_ARTIFACTS_DESTINATION"):
        storage_uri("mlflow-artifacts:/1/abc", PlatformSettings())
    with pytest.raises(ConfigError, match="not fetchable"):
        storage_uri("file:///tmp/model", PlatformSettings())


class _StandIn(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []
    ready_after_gets = 2

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, obj: dict[str, Any]) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append({"method": "PATCH", "path": self.path, "type": self.headers["Content-Type"], "body": body})
        self._answer({**body, "metadata": {**body["metadata"], "generation": 1}})

    def do_GET(self) -> None:
        gets = sum(r["method"] == "GET" for r in self.requests)
        self.requests.append({"method": "GET", "path": self.path})
        ready = "True" if gets + 1 >= self.ready_after_gets else "False"
        status = {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": ready}]}
        self._answer({"metadata": {"name": "fraud-detector", "generation": 1}, "status": status})


@pytest.fixture
def api() -> Iterator[client.ApiClient]:
    _StandIn.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    yield client.ApiClient(config)
    server.shutdown()


def test_apply_is_a_server_side_apply_and_wait_polls_until_ready(api: client.ApiClient) -> None:
    manifest = render(_spec())
    apply(manifest, api)
    live = wait_ready("fraud-detector", "mlplatform", api, timeout_seconds=5, poll_seconds=0.01)
    assert is_ready(live)
    patch = _StandIn.requests[0]
    assert patch["type"] == "application/apply-patch+yaml"
    assert patch["path"] == (
        "/apis/serving.kserve.io/v1beta1/namespaces/mlplatform/inferenceservices/fraud-detector"
        "?fieldManager=mlplatform&force=true"
    )
    assert patch["body"] == manifest
    assert [r["method"] for r in _StandIn.requests] == ["PATCH", "GET", "GET"]


def test_readiness_needs_the_current_generation() -> None:
    ready = {"type": "Ready", "status": "True"}
    assert not is_ready({"metadata": {"generation": 2}, "status": {"observedGeneration": 1, "conditions": [ready]}})
    assert not is_ready(
        {"metadata": {"generation": 1}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    )
