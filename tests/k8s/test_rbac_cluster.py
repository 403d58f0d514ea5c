"""RBAC checked by the real authorizer: each ServiceAccount of the chart may do what the code needs, and nothing more.

The chart (production profile, model enabled) is `helm install`ed into the sandbox with the upstream CRDs it uses.
The API server itself says what each account may do: its SelfSubjectRulesReview (asked with the account's own
token), less what every account gets (a ServiceAccount with no binding at all), must equal the needs declared
below; SubjectAccessReviews then check each need, and a list of dangerous permissions, one by one. Last, the
deploy code (mlplatform.deploy.inferenceservice) runs with real tokens: the pipeline runner's applies a version,
any other account's is refused with an error that says who, what, and which Role of the chart to change.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client

from mlplatform.deploy.inferenceservice import (
    ANNOTATION_MODEL_VERSION,
    FIELD_MANAGER,
    DeployError,
    NotInstalled,
    ServiceSpec,
    apply,
    get,
    render,
)
from scripts.kube.sandbox import ControlPlane
from tests.k8s import kube
from tests.k8s.cluster import api_client, eventually, get_json, install_crds, kubectl, token_client

pytestmark = [pytest.mark.k8s, pytest.mark.cluster]

NS = "rbac-production"  # the chart, production profile, model enabled
NS_MINIMAL = "rbac-minimal"  # the chart without the InferenceService (minimal profile)
RELEASE = "mlplatform"
ISVC = "fraud-detector"
KSERVE = "serving.kserve.io"
#: A ServiceAccount no binding names: what it may do, every account may do (discovery, self reviews).
NOBODY = "rbac-nobody"


@dataclass(frozen=True)
class Access:
    """`verb` on `group`/`resource` (one object when `name`; a `subresource`) in `namespace`: None = the release
    namespace, "" = cluster-wide."""

    verb: str
    group: str
    resource: str
    name: str = ""
    namespace: str | None = None
    subresource: str = ""

    def rule(self) -> tuple[str, str, str, str]:
        """As a SelfSubjectRulesReview lists it: verb, group, resource[/subresource], name ("" = any)."""
        return self.verb, self.group, "/".join(filter(None, (self.resource, self.subresource))), self.name


ISVC_GET = Access("get", KSERVE, "inferenceservices", ISVC)
ISVC_PATCH = Access("patch", KSERVE, "inferenceservices", ISVC)

#: What each ServiceAccount the chart creates (or runs pods as) needs from the Kubernetes API, and who needs it.
NEEDS: dict[str, tuple[Access, ...]] = {
    f"{RELEASE}-pipeline-runner": (
        # mlplatform/deploy/inferenceservice.py get: deploy.cluster.require_installed before a deploy,
        # wait_ready/wait_for polling its status, rollout.backends.ClusterBackend._live (canary_percent, describe),
        # rollout.targets.ClusterTarget's live traffic
        ISVC_GET,
        # mlplatform/deploy/inferenceservice.py apply: server-side apply is a PATCH (application/apply-patch+yaml)
        # of the chart's InferenceService, by deploy.cluster.deploy and every ClusterBackend traffic change
        # (start_canary, set_canary_percent, promote, rollback); never a create: the chart creates it
        ISVC_PATCH,
        # components/train_distributed/step.py (distributedTraining.enabled, on in the production profile): the
        # distributed train task runs as the pipeline runner in the pipelines' namespace, creates its TrainJob,
        # polls it, deletes it past its timeout, and lists its pods to say why they are Pending
        # (mlplatform/deploy/scheduling.py)
        Access("create", "trainer.kubeflow.org", "trainjobs"),
        Access("get", "trainer.kubeflow.org", "trainjobs"),
        Access("delete", "trainer.kubeflow.org", "trainjobs"),
        Access("list", "", "pods"),
    ),
    # serving/ (transformer and predictor, the InferenceService's pods): Feast, the model and the prediction log,
    # no Kubernetes API (the chart does not even mount its token)
    f"{RELEASE}-fraud-detector": (),
    # the MLflow tracking server: PostgreSQL and the artifact store, no Kubernetes API
    f"{RELEASE}-mlflow": (),
    # not created by the chart, but its pods run as it: the monitor (mlplatform/monitoring reads the prediction log
    # and MLflow), the alert webhook (mlplatform/feedback/launchers.py KfpLauncher talks to the KFP API over HTTP,
    # not to Kubernetes), the Feast feature server and the helm test pod; none of them mounts a token
    "default": (),
}

#: Permissions no code of the platform needs, the dangerous ones first: denied to every account above.
DANGEROUS = (
    Access("get", "", "secrets"),  # the Redis, PostgreSQL, S3 and serving-token credentials
    Access("list", "", "secrets"),
    Access("watch", "", "secrets"),
    Access("create", "", "pods", subresource="exec"),
    Access("create", "", "pods"),
    Access("get", "", "pods", subresource="log"),
    Access("patch", "", "configmaps", "mlplatform-pipeline-settings"),
    Access("create", "", "serviceaccounts", subresource="token"),  # a token of another account
    Access("impersonate", "", "serviceaccounts"),
    Access("create", KSERVE, "inferenceservices"),
    Access("delete", KSERVE, "inferenceservices", ISVC),
    Access("update", KSERVE, "inferenceservices", ISVC),  # server-side apply needs patch only
    Access("patch", KSERVE, "inferenceservices", ISVC, subresource="status"),
    Access("list", KSERVE, "inferenceservices"),
    Access("watch", KSERVE, "inferenceservices"),
    Access("patch", KSERVE, "inferenceservices", "another-model"),
    Access("get", KSERVE, "inferenceservices", "another-model"),
    Access("get", KSERVE, "inferenceservices", ISVC, namespace="default"),  # the same name in another namespace
    Access("patch", KSERVE, "inferenceservices", ISVC, namespace="default"),
    Access("patch", KSERVE, "servingruntimes", "mlplatform-fraud"),  # the runtime decides the predictor's image
    Access("create", "rbac.authorization.k8s.io", "roles"),
    Access("create", "rbac.authorization.k8s.io", "rolebindings"),
    Access("patch", "rbac.authorization.k8s.io", "rolebindings", f"{RELEASE}-pipeline-runner"),
    Access("bind", "rbac.authorization.k8s.io", "clusterroles", namespace=""),
    Access("escalate", "rbac.authorization.k8s.io", "roles"),
    Access("list", "", "namespaces", namespace=""),
    Access("get", "", "nodes", namespace=""),
    Access("list", KSERVE, "inferenceservices", namespace=""),  # cluster-wide
    Access("*", "*", "*"),
    Access("*", "*", "*", namespace=""),
)


# --- the installed chart and the accounts' clients ------------------------------------------------------------


def _helm_install(plane: ControlPlane, namespace: str, profile: str, values: dict[str, Any]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as extra:
        yaml.safe_dump(values, extra)
        extra.flush()
        args = [kube.tool("helm"), "install", RELEASE, str(kube.CHART), "--namespace", namespace, "--create-namespace"]
        args += [f"--kubeconfig={plane.kubeconfig}", *(a for p in kube.PROFILES[profile] for a in ("-f", str(p)))]
        result = subprocess.run([*args, "-f", extra.name], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"helm install ({profile}) failed:\n{result.stderr}"


@pytest.fixture(scope="module")
def installed(cluster: ControlPlane) -> Iterator[ControlPlane]:
    """The chart installed twice: production with the model (NS) and minimal, without an InferenceService."""
    install_crds(cluster, "kserve", "prometheus-operator")  # InferenceService, ServingRuntime; PodMonitor & co.
    try:
        _helm_install(cluster, NS, "production", kube.WITH_MODEL)
        _helm_install(cluster, NS_MINIMAL, "minimal", {})
        kubectl(cluster, "create", "serviceaccount", NOBODY, "-n", NS)
        for namespace in (NS, NS_MINIMAL):  # the controller-manager creates it with the namespace
            eventually(
                lambda ns=namespace: kubectl(cluster, "get", "sa", "default", "-n", ns, check=False),
                f"ServiceAccount {namespace}/default",
            )
        yield cluster
    finally:
        kubectl(cluster, "delete", "namespace", NS, NS_MINIMAL, "--wait=false", check=False)


@pytest.fixture(scope="module")
def authorizer(installed: ControlPlane) -> client.AuthorizationV1Api:
    """The admin's AuthorizationV1Api: SubjectAccessReviews for any account."""
    return client.AuthorizationV1Api(api_client(installed))


# --- what the API server allows -------------------------------------------------------------------------------

Rule = tuple[str, str, str, str]  # verb, group, resource, name ("" = any)


def rules_of(plane: ControlPlane, account: str, namespace: str = NS) -> tuple[set[Rule], set[tuple[str, str]]]:
    """The account's resource rules (one per verb x group x resource x name) and non-resource rules in
    `namespace`, from its own SelfSubjectRulesReview (cluster-wide grants included)."""
    api = client.AuthorizationV1Api(token_client(plane, account, NS))
    review = api.create_self_subject_rules_review(
        client.V1SelfSubjectRulesReview(spec=client.V1SelfSubjectRulesReviewSpec(namespace=namespace))
    )
    assert not review.status.incomplete, review.status.evaluation_error
    resources = {
        (verb, group, resource, name)
        for rule in review.status.resource_rules
        for verb in rule.verbs
        for group in rule.api_groups or [""]
        for resource in rule.resources or []
        for name in rule.resource_names or [""]
    }
    non_resources = {
        (verb, url)
        for rule in review.status.non_resource_rules
        for verb in rule.verbs
        for url in rule.non_resource_ur_ls
    }
    return resources, non_resources


def allowed(authorizer: client.AuthorizationV1Api, account: str, access: Access) -> bool:
    """The authorizer's answer to a SubjectAccessReview for the account, with the groups its token carries."""
    attributes = client.V1ResourceAttributes(
        verb=access.verb,
        group=access.group,
        resource=access.resource,
        subresource=access.subresource or None,
        name=access.name or None,
        namespace=NS if access.namespace is None else (access.namespace or None),
    )
    review = authorizer.create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=f"system:serviceaccount:{NS}:{account}",
                groups=["system:serviceaccounts", f"system:serviceaccounts:{NS}", "system:authenticated"],
                resource_attributes=attributes,
            )
        )
    )
    return bool(review.status.allowed)


def test_every_service_account_of_the_chart_has_a_row_in_the_needs_table(installed: ControlPlane) -> None:
    accounts = get_json(installed, "serviceaccounts", "-n", NS, "-l", f"app.kubernetes.io/instance={RELEASE}")
    created = {a["metadata"]["name"] for a in accounts["items"]}
    assert created == set(NEEDS) - {"default"}
    # a token is mounted only into the pods of an account that talks to the API server
    for account in accounts["items"]:
        assert account.get("automountServiceAccountToken") is bool(NEEDS[account["metadata"]["name"]]), account


@pytest.mark.parametrize("account", sorted(NEEDS))
def test_what_the_api_server_allows_is_exactly_what_the_code_needs(installed: ControlPlane, account: str) -> None:
    """SelfSubjectRulesReview with the account's token, less what every account may do, equals its needs."""
    baseline, baseline_urls = rules_of(installed, NOBODY)
    rules, urls = rules_of(installed, account)
    granted = rules - baseline
    assert granted == {need.rule() for need in NEEDS[account]}
    assert urls == baseline_urls  # no non-resource URL beyond discovery and health
    # and nothing in another namespace: there it may do what an account without bindings may do
    assert rules_of(installed, account, "default")[0] == rules_of(installed, NOBODY, "default")[0]


@pytest.mark.parametrize("account", sorted(NEEDS))
def test_each_need_is_allowed_and_each_dangerous_permission_denied(
    installed: ControlPlane, authorizer: client.AuthorizationV1Api, account: str
) -> None:
    expected = dict.fromkeys(NEEDS[account], True) | dict.fromkeys(DANGEROUS, False)
    wrong = {a: not want for a, want in expected.items() if allowed(authorizer, account, a) != want}
    assert not wrong, f"{account}: the authorizer allows (True) or denies (False), unlike the needs table: {wrong}"


# --- the deploy code with real tokens -------------------------------------------------------------------------


def _version_change(version: str, percent: int | None, namespace: str = NS) -> dict[str, Any]:
    return render(
        ServiceSpec(
            name=ISVC,
            namespace=namespace,
            model_name=ISVC,
            model_version=version,
            storage_uri=f"s3://mlflow/1/run{version}/artifacts/model",
            canary_traffic_percent=percent,
            role="canary" if percent is not None else "stable",
        )
    )


def test_the_pipeline_runner_applies_a_version_to_the_charts_inference_service(installed: ControlPlane) -> None:
    runner = token_client(installed, f"{RELEASE}-pipeline-runner", NS)
    before = get(ISVC, NS, runner)
    live = apply(_version_change("4", 10), runner)
    predictor = live["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == "s3://mlflow/1/run4/artifacts/model"
    assert predictor["canaryTrafficPercent"] == 10
    assert live["metadata"]["annotations"][ANNOTATION_MODEL_VERSION] == "4"
    # the chart's part (the collocated transformer container) is left as it was
    assert live["spec"]["predictor"]["containers"] == before["spec"]["predictor"]["containers"]
    assert FIELD_MANAGER in {m["manager"] for m in live["metadata"]["managedFields"]}
    # promotion: the field left out is removed (mlplatform owned it)
    promoted = apply(_version_change("4", None), runner)
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]
    assert get(ISVC, NS, runner)["metadata"]["generation"] == promoted["metadata"]["generation"]


@pytest.mark.parametrize("account", [f"{RELEASE}-fraud-detector", "default"])
def test_another_accounts_token_is_refused_with_an_error_naming_the_role_to_change(
    installed: ControlPlane, account: str
) -> None:
    """The serving account, and the monitor's (default): a DeployError saying who may not do what, and the fix."""
    other = token_client(installed, account, NS)
    identity = f"system:serviceaccount:{NS}:{account}"
    with pytest.raises(DeployError) as refused:
        apply(_version_change("5", 10), other)
    message = str(refused.value)
    assert not isinstance(refused.value, NotInstalled)
    for part in (
        f"applying InferenceService {NS}/{ISVC} failed: forbidden (HTTP 403)",
        f"{identity} may not patch inferenceservices.serving.kserve.io in namespace {NS}",
        "Role and RoleBinding <release>-pipeline-runner (mlplatform-pipeline-runner for release mlplatform",
        f"pipelineRunner.rbac.extraSubjects (name: {account}, namespace: {NS})",
    ):
        assert part in message
    assert "HTTP response headers" not in message  # not the client's raw response dump
    with pytest.raises(DeployError, match=f"{identity} may not get inferenceservices") as unreadable:
        get(ISVC, NS, other)
    assert not isinstance(unreadable.value, NotInstalled)  # forbidden is not "missing"
    # and the live object is as the pipeline runner left it
    assert (
        get(ISVC, NS, token_client(installed, f"{RELEASE}-pipeline-runner", NS))["metadata"]["annotations"][
            ANNOTATION_MODEL_VERSION
        ]
        != "5"
    )


def test_without_the_charts_inference_service_the_runner_is_told_to_install_it(installed: ControlPlane) -> None:
    """Minimal profile: the runner may get and patch the InferenceService, but not create it (server-side apply of
    a missing object is a create): both calls say which Helm command creates it."""
    runner = token_client(installed, f"{RELEASE}-pipeline-runner", NS_MINIMAL)
    with pytest.raises(NotInstalled, match=f"InferenceService {NS_MINIMAL}/{ISVC} does not exist"):
        get(ISVC, NS_MINIMAL, runner)
    with pytest.raises(NotInstalled) as refused:
        apply(_version_change("1", None, NS_MINIMAL), runner)
    message = str(refused.value)
    assert f"helm upgrade --install mlplatform helm/mlplatform -n {NS_MINIMAL}" in message
    assert "--set fraudDetector.model.storageUri=s3://mlflow/1/run1/artifacts/model" in message
    assert "fraudDetector.model.version=1" in message
    assert 'cannot create resource "inferenceservices"' in message
