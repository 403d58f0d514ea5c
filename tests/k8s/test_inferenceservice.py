"""The rendered InferenceService against the KServe CRD, and its server-side apply on the real control plane.

The apply and the wait run against the sandbox's API server with KServe's and Knative's real controllers
(scripts/kube/sandbox.py): the status read is the one KServe computes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from kubernetes import client

from mlplatform.deploy.artifact import storage_uri
from mlplatform.deploy.inferenceservice import (
    DeployError,
    ServiceSpec,
    apply_and_wait,
    get,
    is_ready,
    new_revision_expected,
    predictor_traffic,
    render,
    settled,
    wait_for,
)
from mlplatform.errors import ConfigError
from mlplatform.settings import PlatformSettings
from scripts.kube.sandbox import ControlPlane
from tests.k8s.cluster import api_client, kubectl
from tests.k8s.crd import validate_custom_resource
from tests.k8s.helm_cluster import apply_inference_service

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


@pytest.fixture
def installed(cluster: ControlPlane) -> Iterator[tuple[client.ApiClient, str]]:
    """The chart's InferenceService and ServingRuntime (version 3) in a fresh namespace, Ready by KServe itself."""
    namespace = f"isvc-{uuid.uuid4().hex[:6]}"
    apply_inference_service(cluster, namespace)
    api = api_client(cluster)
    wait_for("fraud-detector", namespace, api, is_ready, "ready", timeout_seconds=60, poll_seconds=0.2)
    yield api, namespace
    kubectl(cluster, "delete", "namespace", namespace, "--wait=false")


@pytest.mark.cluster
def test_a_version_change_is_a_server_side_apply_that_kserve_rolls_out(installed) -> None:
    api, namespace = installed
    live = get("fraud-detector", namespace, api)
    before = predictor_traffic(live).latest_revision
    manifest = render(_spec(namespace=namespace, model_version="4", storage_uri="s3://mlflow/1/v4/artifacts/model"))
    settled_obj = apply_and_wait(manifest, api, live, "serving version 4", timeout_seconds=60, poll_seconds=0.2)
    traffic = predictor_traffic(settled_obj)
    assert traffic.latest_revision != before and traffic.latest_percent == 100  # KServe/Knative's own status
    assert settled_obj["spec"]["predictor"]["model"]["storageUri"] == "s3://mlflow/1/v4/artifacts/model"
    # the version's fields belong to field manager `mlplatform` (an Apply), the rest to whoever installed it
    managers = {m["manager"]: m for m in settled_obj["metadata"]["managedFields"]}
    owned = managers["mlplatform"]
    assert owned["operation"] == "Apply"
    model_fields = owned["fieldsV1"]["f:spec"]["f:predictor"]["f:model"]
    assert "f:storageUri" in model_fields and "f:env" in model_fields
    assert "f:transformer" not in owned["fieldsV1"]["f:spec"]


@pytest.mark.cluster
def test_a_change_kserve_cannot_roll_out_times_out_with_its_status(cluster: ControlPlane, installed) -> None:
    api, namespace = installed
    kubectl(cluster, "delete", "servingruntime/mlplatform-fraud", "-n", namespace)
    live = get("fraud-detector", namespace, api)
    manifest = render(_spec(namespace=namespace, model_version="5", storage_uri="s3://mlflow/1/v5/artifacts/model"))
    # KServe cannot reconcile it (no runtime) and leaves the status as it was: still the first revision
    with pytest.raises(DeployError, match=r"not serving version 5 after 3s: .*'latestCreatedRevision': '[^']*-00001'"):
        apply_and_wait(manifest, api, live, "serving version 5", timeout_seconds=3, poll_seconds=0.2)


READY = {"type": "Ready", "status": "True"}


def _status(latest: str, ready: str, traffic: list[tuple[str, int, bool]], generation: int = 3) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {
            # KServe copies observedGeneration from the last Knative Service it reconciled, not from the
            # InferenceService: it may lag the generation while everything is rolled out
            "observedGeneration": generation - 1,
            "conditions": [READY],
            "components": {
                "predictor": {
                    "latestCreatedRevision": latest,
                    "latestReadyRevision": ready,
                    "traffic": [{"revisionName": r, "percent": p, "latestRevision": x} for r, p, x in traffic],
                }
            },
        },
    }


def test_settled_reads_revisions_and_traffic_not_the_observed_generation() -> None:
    assert is_ready(_status("p-2", "p-2", [("p-2", 100, True)]))
    assert not is_ready({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    promoted = settled("p-1", expect_new=True, latest_percent=100)
    assert not promoted(_status("p-1", "p-1", [("p-1", 100, True)]))  # the status before KServe saw the change
    assert not promoted(_status("p-2", "p-1", [("p-1", 100, True)]))  # the new revision not ready yet
    assert promoted(_status("p-2", "p-2", [("p-2", 100, True)]))
    canary = settled("p-2", expect_new=False, latest_percent=25)
    assert not canary(_status("p-2", "p-2", [("p-2", 10, True), ("p-1", 90, False)]))
    assert canary(_status("p-2", "p-2", [("p-2", 25, True), ("p-1", 75, False)]))


def test_only_a_model_change_makes_a_new_revision() -> None:
    before = render(_spec())
    assert not new_revision_expected(before, render(_spec(canary_traffic_percent=25)))
    assert new_revision_expected(before, render(_spec(model_version="5")))
    assert new_revision_expected(before, render(_spec(role="canary")))
