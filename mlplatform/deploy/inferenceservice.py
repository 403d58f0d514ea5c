"""The fraud model's KServe InferenceService: a version change, server-side applied; status and waits.

The chart (helm/mlplatform, templates/fraud-detector.yaml) creates the InferenceService with everything a
cluster decides: the transformer (image, Feast stores and their credentials, token, resources, the
prediction-log claim; a second container of the predictor pods, or a component of its own, by the chart's
`fraudDetector.layout`), service accounts, replicas, security contexts, volumes. The platform changes only
what a new version changes: the predictor's `storageUri`, its version and role, `canaryTrafficPercent`
and the version and role annotations (a collocated transformer reads its version and role from these: the
chart gives it KServe placeholders that the controller fills in for each revision). `render` is that apply
configuration; server-side apply (field manager `mlplatform`) merges it into the chart's object and leaves every
other field as the chart set it (the container lists are atomic in the KServe CRD: a full object would replace
them). A field `mlplatform` applied before and leaves out now is removed, which is how promotion drops
`canaryTrafficPercent`.

The predictor runs on the `mlplatform-fraud` ServingRuntime (also the chart's), which starts `python -m
serving.predictor` on the artifact KServe's storage initializer downloads from `storageUri` to /mnt/models.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from mlplatform.errors import MlPlatformError

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
RUNTIME_NAME = "mlplatform-fraud"
MODEL_FORMAT = "mlplatform-fraud-mlp"
FIELD_MANAGER = "mlplatform"
ANNOTATION_MODEL_NAME = "mlplatform.io/model-name"
ANNOTATION_MODEL_VERSION = "mlplatform.io/model-version"
ANNOTATION_ROLE = "mlplatform.io/role"


@dataclass(frozen=True)
class ServiceSpec:
    """Which version the InferenceService's predictor serves, and with how much traffic.

    Attributes:
        name: InferenceService name (also the model name on the endpoint path).
        namespace: Kubernetes namespace.
        model_name: Registered model name.
        model_version: Registered version.
        storage_uri: Where KServe's storage initializer fetches the artifact (s3://, gs://, pvc://...).
        canary_traffic_percent: Share of traffic for the latest revision; None = all of it.
        role: stable or canary: the predictor revision's role label (a canary is relabelled stable on promotion).
    """

    name: str
    namespace: str
    model_name: str
    model_version: str
    storage_uri: str
    canary_traffic_percent: int | None = None
    role: str = "stable"


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def render(spec: ServiceSpec) -> dict[str, Any]:
    """The apply configuration that makes the InferenceService serve `spec` (a dict for server-side apply)."""
    if spec.canary_traffic_percent is not None and not 0 <= spec.canary_traffic_percent <= 100:
        raise ValueError(f"canary_traffic_percent must be 0..100, got {spec.canary_traffic_percent}")
    if spec.role not in ("stable", "canary"):
        raise ValueError(f"role must be stable or canary, got {spec.role!r}")
    predictor: dict[str, Any] = {
        "model": {
            "modelFormat": {"name": MODEL_FORMAT},
            "runtime": RUNTIME_NAME,
            "storageUri": spec.storage_uri,
            # the predictor's series and answers carry its version and role (canary analysis reads them)
            "env": [
                _env("MLPLATFORM_SERVING_MODEL_VERSION", spec.model_version),
                _env("MLPLATFORM_SERVING_ROLE", spec.role),
            ],
        },
    }
    if spec.canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = spec.canary_traffic_percent
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "annotations": {
                ANNOTATION_MODEL_NAME: spec.model_name,
                ANNOTATION_MODEL_VERSION: spec.model_version,
                ANNOTATION_ROLE: spec.role,
            },
        },
        "spec": {"predictor": predictor},
    }


class DeployError(MlPlatformError):
    """The InferenceService could not be applied or did not become ready."""


class NotInstalled(DeployError):
    """The InferenceService does not exist: the chart creates it (the platform may only read and patch it)."""


def install_hint(name: str, namespace: str, storage_uri: str, model_version: str) -> str:
    """The Helm command that creates the InferenceService serving a version (docs/install.md).

    The version goes in with `--set-string`: `--set` would make "1" a number, which the chart's schema refuses.
    """
    return (
        f"InferenceService {namespace}/{name} does not exist; the chart creates it (the pipeline runner may only "
        f"get and patch it): helm upgrade --install mlplatform helm/mlplatform -n {namespace} --reuse-values "
        f"--set fraudDetector.enabled=true --set fraudDetector.model.storageUri={storage_uri} "
        f"--set-string fraudDetector.model.version={model_version}"
    )


#: Who may change the InferenceService, and where the chart says so (helm/mlplatform/templates/pipeline-runner.yaml).
RUNNER_RBAC = (
    "the chart grants get and patch of this one InferenceService to the pipeline runner only: Role and RoleBinding "
    "<release>-pipeline-runner (mlplatform-pipeline-runner for release mlplatform; "
    "helm/mlplatform/templates/pipeline-runner.yaml) bind the ServiceAccount <release>-pipeline-runner"
)


def _api_status(exc: Exception) -> tuple[int | None, str]:
    """HTTP status of a failed API call and the API server's own message (its Status object), when it answered."""
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        message = None
    return status, str(message or getattr(exc, "reason", None) or exc)


class Unavailable(DeployError):
    """The API server did not answer, or answered 429 or 5xx (restarting, throttling, its etcd down): retried
    within the caller's time budget, then reported."""


#: Answers that say "not now" rather than "no": retried.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


def is_transient(exc: Exception) -> bool:
    """Whether a failed Kubernetes API call says "not now": no answer at all (connection refused or reset, TLS,
    timeout: the API server restarting) or 429/5xx. Worth retrying within the caller's time budget."""
    import urllib3

    status, _ = _api_status(exc)
    if status is None:
        return isinstance(exc, OSError | urllib3.exceptions.HTTPError)
    return status in TRANSIENT_STATUSES


def _failure(
    exc: Exception, doing: str, namespace: str, name: str, manifest: dict[str, Any] | None = None
) -> DeployError:
    """A DeployError that says what was refused, to whom, and what to change (not the client's raw response dump)."""
    where = f"{doing} InferenceService {namespace}/{name} failed"
    status, message = _api_status(exc)
    if status is None:  # no answer: connection refused, TLS, timeout
        return Unavailable(f"{where}: the API server did not answer: {exc}")
    if status in TRANSIENT_STATUSES:
        return Unavailable(f"{where}: the API server could not serve it now (HTTP {status}): {message}")
    if status == 401:
        return DeployError(
            f"{where}: unauthorized (HTTP 401): the API server did not accept the credentials (an expired or invalid "
            f"token, or a kubeconfig of another cluster): {message}"
        )
    if status != 403:
        return DeployError(f"{where}: HTTP {status}: {message}")
    user = re.search(r'User "([^"]*)"', message)
    identity = user.group(1) if user else "this client"
    refused = re.search(r'cannot (\w+) resource "([^"]+)"', message)
    verb, resource = refused.groups() if refused else ("patch" if manifest else "get", PLURAL)
    if verb == "create" and manifest is not None:  # server-side apply of an object that does not exist yet
        predictor = manifest["spec"]["predictor"]["model"]
        version = manifest["metadata"].get("annotations", {}).get(ANNOTATION_MODEL_VERSION, "<version>")
        return NotInstalled(
            f"{install_hint(name, namespace, predictor['storageUri'], version)} (the API server refused to create "
            f"it: {message})"
        )
    account = re.fullmatch(r"system:serviceaccount:([^:]+):([^:]+)", identity)
    bind = (
        f"add it to pipelineRunner.rbac.extraSubjects (name: {account.group(2)}, namespace: {account.group(1)}) "
        "and helm upgrade"
        if account
        else "bind this identity to that Role"
    )
    return DeployError(
        f"{where}: forbidden (HTTP 403): {identity} may not {verb} {resource}.{GROUP} in namespace {namespace}; "
        f"{RUNNER_RBAC}. Run as that ServiceAccount, or {bind}. API server: {message}"
    )


def apply(
    manifest: dict[str, Any], api_client: Any, retry_seconds: float = 60.0, sleep: Any = time.sleep
) -> dict[str, Any]:
    """Server-side apply `manifest` (field manager `mlplatform`, conflicts forced); returns the live object.

    An apply is idempotent, so one the API server could not serve (`Unavailable`: no answer, 429, 5xx) is tried
    again, with backoff, for up to `retry_seconds`; the object changes all at once or not at all.

    Args:
        manifest: A rendered InferenceService.
        api_client: A `kubernetes.client.ApiClient` configured for the cluster.
        retry_seconds: How long to keep trying while the API server is unavailable.
    """
    meta = manifest["metadata"]
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{meta['namespace']}/{PLURAL}/{meta['name']}"
    deadline, backoff = time.monotonic() + retry_seconds, 0.2
    while True:
        try:
            return api_client.call_api(
                path,
                "PATCH",
                query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
                body=manifest,
                response_type="object",
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=max(1.0, min(30.0, deadline - time.monotonic())),
            )
        except Exception as exc:  # ApiException, urllib3 errors: say what failed
            failure = _failure(exc, "applying", meta["namespace"], meta["name"], manifest)
            if not isinstance(failure, Unavailable) or time.monotonic() + backoff > deadline:
                raise failure from exc
        sleep(backoff)
        backoff = min(backoff * 2, 5.0)


def is_ready(obj: dict[str, Any]) -> bool:
    """Whether an InferenceService's status says Ready=True.

    Not for its generation: KServe copies `status.observedGeneration` from the Knative Service (or Deployment)
    of the component it reconciled last, not from the InferenceService (seen with KServe v0.16's controller:
    generation 3, observedGeneration 2, everything rolled out). Whether the status reflects a change is told by
    the predictor's revisions instead: `settled`.
    """
    status = obj.get("status") or {}
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def new_revision_expected(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether an applied change makes a new predictor revision: its model (artifact, version, role) changed.

    A change of `canaryTrafficPercent` alone moves traffic between the revisions that exist.
    """

    def model(obj: dict[str, Any]) -> Any:
        return ((obj.get("spec") or {}).get("predictor") or {}).get("model")

    return model(before) != model(after)


def settled(previous_revision: str | None, expect_new: bool, latest_percent: int) -> Any:
    """The condition that an applied change is in force: Ready, the latest predictor revision ready (and a new
    one, not `previous_revision`, when the change makes one) and serving `latest_percent` of the traffic.

    Args:
        previous_revision: `latestCreatedRevision` before the change.
        expect_new: Whether the change makes a new revision (`new_revision_expected`).
        latest_percent: The share the latest revision must report (100 without a canary).
    """

    def condition(obj: dict[str, Any]) -> bool:
        traffic = predictor_traffic(obj)
        if not is_ready(obj) or traffic.latest_ready_revision != traffic.latest_revision:
            return False
        if expect_new and traffic.latest_revision == previous_revision:
            return False
        return traffic.latest_percent == latest_percent

    return condition


def get(name: str, namespace: str, api_client: Any) -> dict[str, Any]:
    """The live InferenceService.

    Raises:
        DeployError: When it cannot be read.
    """
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
    try:
        return api_client.call_api(
            path,
            "GET",
            header_params={"Accept": "application/json"},
            response_type="object",
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _request_timeout=30,
        )
    except Exception as exc:
        if getattr(exc, "status", None) == 404:
            raise NotInstalled(f"InferenceService {namespace}/{name} does not exist") from exc
        raise _failure(exc, "reading", namespace, name) from exc


@dataclass(frozen=True)
class PredictorTraffic:
    """The predictor's rollout status as KServe reports it (Serverless mode).

    Attributes:
        canary_percent: `spec.predictor.canaryTrafficPercent`; None when absent (the latest revision gets all).
        latest_percent: Share status reports for the latest revision (None when status has no traffic yet).
        latest_revision: `latestCreatedRevision`.
        latest_ready_revision: `latestReadyRevision`.
        latest_rolled_out_revision: `latestRolledoutRevision` (the last one that got 100%).
        previous_rolled_out_revision: `previousRolledoutRevision` (what a rollback returns to).
        traffic: `status.components.predictor.traffic` as reported.
    """

    canary_percent: int | None
    latest_percent: int | None
    latest_revision: str | None
    latest_ready_revision: str | None
    latest_rolled_out_revision: str | None
    previous_rolled_out_revision: str | None
    traffic: tuple[dict[str, Any], ...]


def predictor_traffic(obj: dict[str, Any]) -> PredictorTraffic:
    """Read the predictor's traffic split and revisions from a live InferenceService."""
    predictor = (obj.get("status") or {}).get("components", {}).get("predictor", {}) or {}
    traffic = tuple(predictor.get("traffic") or ())
    latest = [t for t in traffic if t.get("latestRevision")]
    return PredictorTraffic(
        canary_percent=((obj.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent"),
        latest_percent=sum(int(t.get("percent") or 0) for t in latest) if traffic else None,
        latest_revision=predictor.get("latestCreatedRevision"),
        latest_ready_revision=predictor.get("latestReadyRevision"),
        latest_rolled_out_revision=predictor.get("latestRolledoutRevision"),
        previous_rolled_out_revision=predictor.get("previousRolledoutRevision"),
        traffic=traffic,
    )


def traffic_managers(obj: dict[str, Any]) -> list[str]:
    """The field managers that own `spec.predictor.canaryTrafficPercent` (`mlplatform`, or `kubectl-patch`,
    `kubectl-edit`... when a person changed it), from the object's managedFields."""
    owners = []
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        predictor = ((entry.get("fieldsV1") or {}).get("f:spec") or {}).get("f:predictor") or {}
        if "f:canaryTrafficPercent" in predictor:
            owners.append(str(entry.get("manager")))
    return owners


def wait_for(
    name: str,
    namespace: str,
    api_client: Any,
    condition: Any,
    what: str,
    timeout_seconds: float = 600.0,
    poll_seconds: float = 5.0,
) -> dict[str, Any]:
    """Poll the InferenceService until `condition(obj)` holds; raises DeployError with its status on timeout.

    While the API server is unavailable (restarting, its etcd down) polling goes on until the deadline.
    """
    deadline = time.monotonic() + timeout_seconds
    last: dict[str, Any] | None = None
    unavailable: Unavailable | None = None
    while True:
        try:
            last, unavailable = get(name, namespace, api_client), None
            if condition(last):
                return last
        except Unavailable as exc:
            unavailable = exc
        if time.monotonic() >= deadline:
            if unavailable is not None:
                raise DeployError(
                    f"InferenceService {namespace}/{name} not {what} after {timeout_seconds:g}s: {unavailable}"
                )
            status = (last or {}).get("status") or {}
            raise DeployError(
                f"InferenceService {namespace}/{name} not {what} after {timeout_seconds:g}s: "
                f"conditions {status.get('conditions')}, predictor {status.get('components', {}).get('predictor')}"
            )
        time.sleep(poll_seconds)


def apply_and_wait(
    manifest: dict[str, Any],
    api_client: Any,
    live: dict[str, Any],
    what: str,
    timeout_seconds: float = 600.0,
    poll_seconds: float = 5.0,
) -> dict[str, Any]:
    """Server-side apply `manifest` over `live` (the object read before) and wait until the change is `settled`.

    Raises:
        DeployError: The API refused it, or it was not in force within `timeout_seconds` (with its status);
            `Unavailable` when the API server did not answer within that time (nothing was changed by this call).
    """
    applied = apply(manifest, api_client, retry_seconds=timeout_seconds)
    previous = predictor_traffic(live).latest_revision
    percent = (manifest["spec"].get("predictor") or {}).get("canaryTrafficPercent")
    condition = settled(previous, new_revision_expected(live, applied), 100 if percent is None else percent)
    meta = manifest["metadata"]
    return wait_for(meta["name"], meta["namespace"], api_client, condition, what, timeout_seconds, poll_seconds)
