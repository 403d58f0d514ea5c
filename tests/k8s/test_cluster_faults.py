"""Faults on the real control plane during a rollout: the API server restarted, a person changing the canary's
traffic with kubectl, etcd down. KServe and Knative are the sandbox's real controllers; the evidence is a stub
(the Prometheus queries are tested in tests/integration) and the artifacts are not downloaded (tests/e2e)."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlplatform.deploy.inferenceservice import (
    DeployError,
    ServiceSpec,
    Unavailable,
    apply_and_wait,
    get,
    is_ready,
    predictor_traffic,
    render,
    wait_for,
)
from mlplatform.rollout.analysis import StepEvidence
from mlplatform.rollout.backends import ClusterBackend
from mlplatform.rollout.controller import Controller
from mlplatform.settings import PlatformSettings
from scripts.kube.sandbox import ControlPlane
from tests.k8s import kube
from tests.k8s.cluster import CANARY, NAME, api_client, apply_objects, ensure_namespace, eventually, kubectl, registered

pytestmark = [pytest.mark.k8s, pytest.mark.cluster]


@pytest.fixture
def namespace(cluster: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The chart's InferenceService serving version 1 in a fresh namespace, Ready by KServe."""
    monkeypatch.setattr("mlplatform.rollout.backends.prepare_local", lambda settings, version: None)
    monkeypatch.setattr("mlplatform.rollout.backends.score_references", lambda settings, stable, canary: None)
    ns = f"faults-{uuid.uuid4().hex[:6]}"
    ensure_namespace(cluster, ns)
    values = {"fraudDetector": {"model": {"version": "1", "storageUri": "s3://mlflow/1/run1/artifacts/model"}}}
    docs = kube.objects(kube.helm_template("default", kube.WITH_MODEL, values))
    objects = [
        {**d, "metadata": {**d["metadata"], "namespace": ns}}
        for d in docs
        if d["kind"] in ("InferenceService", "ServingRuntime", "ServiceAccount")
    ]
    apply_objects(cluster, objects)
    wait_for(NAME, ns, api_client(cluster), is_ready, "ready", timeout_seconds=60, poll_seconds=0.2)
    yield ns
    kubectl(cluster, "delete", "namespace", ns, "--wait=false")


class Evidence:
    """Healthy evidence for both versions; `on_collect(step_percent)` runs the fault at a chosen step."""

    def __init__(self, on_collect: Callable[[int], None]) -> None:
        self.on_collect = on_collect
        self.step = 0

    def begin_step(self) -> None:
        self.step += 1

    def collect(self, version: str, role: str) -> StepEvidence:
        if role == "canary":
            self.on_collect(self.step)
        buckets = ((0.05, 90.0), (0.5, 99.0), (1.0, 100.0), (math.inf, 100.0))
        return StepEvidence(100, 0, 0.002, 0, buckets)


def _rollout(cluster: ControlPlane, ns: str, on_collect: Callable[[int], None], tmp_path: Path) -> Any:
    settings = PlatformSettings(
        deploy_target="cluster",
        deploy_namespace=ns,
        registered_model_name=NAME,
        mlflow_artifacts_destination="s3://mlflow",
    )
    backend = ClusterBackend(
        settings, CANARY, registered("1"), registered("2"), api_client=api_client(cluster), poll_seconds=0.1
    )
    backend._evidence = Evidence(on_collect)
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
    return controller.run()


def _never_half_set(cluster: ControlPlane, ns: str, outcome: str) -> dict[str, Any]:
    live = get(NAME, ns, api_client(cluster))
    traffic = predictor_traffic(live)
    if outcome == "promoted":
        assert traffic.canary_percent is None and traffic.latest_percent == 100
    else:
        assert traffic.canary_percent == 0 and traffic.latest_percent == 0
    return live


def test_an_api_server_restart_mid_rollout_does_not_stop_it(cluster: ControlPlane, namespace: str, tmp_path) -> None:
    restarted = threading.Event()

    def restart_at_second_step(step: int) -> None:
        if step == 2 and not restarted.is_set():
            restarted.set()
            cluster.halt("kube-apiserver")

            def back() -> None:
                time.sleep(2)
                cluster.launch("kube-apiserver")

            threading.Thread(target=back, daemon=True).start()

    report = _rollout(cluster, namespace, restart_at_second_step, tmp_path)
    assert restarted.is_set()
    eventually(cluster.api_ready, "API server back", timeout=60)
    # the next traffic change waited for the API server (retried, idempotent) and the rollout went on
    assert report.outcome == "promoted", report.reason
    assert [s.percent for s in report.steps] == list(CANARY.traffic_steps_percent[:-1])
    _never_half_set(cluster, namespace, report.outcome)


def test_a_person_changing_the_canary_with_kubectl_is_detected_and_rolled_back(
    cluster: ControlPlane, namespace: str, tmp_path
) -> None:
    """Decision (docs/adr/0015-cluster-sandbox.md): a split changed outside the controller is a person's decision
    to stop; the controller names who changed it (the field manager) and rolls back instead of fighting them."""

    def patch_at_second_step(step: int) -> None:
        if step == 2:
            kubectl(
                cluster,
                "patch",
                "inferenceservice",
                NAME,
                "-n",
                namespace,
                "--type=merge",
                "-p",
                '{"spec":{"predictor":{"canaryTrafficPercent":80}}}',
            )

    report = _rollout(cluster, namespace, patch_at_second_step, tmp_path)
    assert report.outcome == "rolled_back"
    assert "traffic changed outside the controller by kubectl-patch: canary at 80 %" in report.reason
    _never_half_set(cluster, namespace, report.outcome)


def test_etcd_down_gives_a_clear_error_and_changes_nothing(cluster: ControlPlane, namespace: str) -> None:
    api = api_client(cluster)
    live = get(NAME, namespace, api)
    manifest = render(ServiceSpec(NAME, namespace, NAME, "2", "s3://mlflow/1/run2/artifacts/model"))
    cluster.halt("etcd")
    try:
        began = time.monotonic()
        with pytest.raises(Unavailable, match="applying InferenceService .* failed: the API server"):
            apply_and_wait(manifest, api, live, "serving version 2", timeout_seconds=5, poll_seconds=0.2)
        assert time.monotonic() - began < 40  # bounded by the time budget (and one request's timeout)
    finally:
        cluster.launch("etcd")
    eventually(
        lambda: cluster.get(f"/apis/serving.kserve.io/v1beta1/namespaces/{namespace}/inferenceservices")[0] == 200,
        "API server serving again",
        timeout=60,
    )
    after = get(NAME, namespace, api)
    assert after["spec"]["predictor"]["model"]["storageUri"] == "s3://mlflow/1/run1/artifacts/model"
    assert after["metadata"]["generation"] == live["metadata"]["generation"]  # nothing half-applied
    assert issubclass(Unavailable, DeployError)
