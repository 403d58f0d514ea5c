"""Deploy by registry alias on a cluster: the version becomes the chart's InferenceService.

The version change (`mlplatform.deploy.inferenceservice`) is applied server-side through the Kubernetes API and
awaited until Ready. Locally the artifact is downloaded, verified and served on localhost instead
(`mlplatform.local.serving`); `mlplatform.rollout.targets` chooses between the two.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from mlplatform.deploy.artifact import prepare_local, resolve, storage_uri
from mlplatform.deploy.inferenceservice import (
    NotInstalled,
    ServiceSpec,
    apply,
    apply_and_wait,
    get,
    install_hint,
    render,
)
from mlplatform.errors import ConfigError
from mlplatform.registry import RegisteredVersion
from mlplatform.settings import PlatformSettings


@dataclass(frozen=True)
class DeployResult:
    """What a deployment did.

    Attributes:
        model_name: Registered model name.
        model_version: The version the alias pointed at.
        alias: The alias resolved.
        target: local or cluster.
        source: The version's artifact location in the registry.
        storage_uri: What the InferenceService fetches (cluster) or the verified local folder (local).
        manifest: The version change for the InferenceService (rendered for both targets, applied on a cluster).
    """

    model_name: str
    model_version: str
    alias: str
    target: str
    source: str
    storage_uri: str
    manifest: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def render_manifest(
    settings: PlatformSettings,
    version: RegisteredVersion,
    uri: str,
    canary_traffic_percent: int | None = None,
    role: str = "stable",
) -> dict[str, Any]:
    """What a version changes in the InferenceService (`role` canary while it is rolled out): the apply
    configuration of `mlplatform.deploy.inferenceservice.render`; the chart owns the rest of the object."""

    return render(
        ServiceSpec(
            name=settings.registered_model_name,
            namespace=settings.deploy_namespace,
            model_name=version.name,
            model_version=version.version,
            storage_uri=uri,
            canary_traffic_percent=canary_traffic_percent,
            role=role,
        )
    )


def require_installed(settings: PlatformSettings, api_client: Any, uri: str, model_version: str) -> dict[str, Any]:
    """The live InferenceService; raises NotInstalled with the Helm command that creates it when it is missing."""

    name = settings.registered_model_name
    try:
        return get(name, settings.deploy_namespace, api_client)
    except NotInstalled as exc:
        raise NotInstalled(install_hint(name, settings.deploy_namespace, uri, model_version)) from exc


def kubernetes_client() -> Any:
    """An ApiClient from the pod's service account, or from the kubeconfig outside a cluster.

    Raises:
        ConfigError: When there is neither.
    """
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise ConfigError(
                f"no Kubernetes access: not in a pod with a service account, and no usable kubeconfig ({exc})"
            ) from exc
    return client.ApiClient()


def deploy(
    settings: PlatformSettings,
    alias: str = "champion",
    canary_traffic_percent: int | None = None,
    api_client: Any | None = None,
    wait: bool = True,
) -> DeployResult:
    """Deploy the version behind `alias` on the cluster: verify the artifact, server-side apply the version change
    to the InferenceService the chart installed and (with `wait`) wait until Ready. The local counterpart is
    `mlplatform.local.serving.prepare`; `mlplatform.rollout.targets.target_for` picks between them.

    Raises:
        ConfigError: Unknown alias, or an artifact location a cluster cannot fetch.
        ArtifactInvalid: The artifact cannot be served.
        mlplatform.deploy.inferenceservice.NotInstalled: No InferenceService yet; the message holds the Helm command.
        mlplatform.deploy.inferenceservice.DeployError: The Kubernetes API refused it or it never became Ready.
    """
    version = resolve(settings, alias)
    prepare_local(settings, version)  # verified before anything gets traffic
    uri = storage_uri(version.source, settings)
    manifest = render_manifest(settings, version, uri, canary_traffic_percent)
    api_client = api_client or kubernetes_client()
    live = require_installed(settings, api_client, uri, version.version)
    if wait:
        what = f"serving version {version.version}"
        apply_and_wait(manifest, api_client, live, what, settings.deploy_ready_timeout_seconds)
    else:
        apply(manifest, api_client)
    return DeployResult(version.name, version.version, alias, "cluster", version.source, uri, manifest)


def serving_env(settings: PlatformSettings, version: str, role: str = "stable") -> dict[str, str]:
    """Environment of local serving processes: model identity, Feast stores, prediction log folder."""
    return {
        "MLPLATFORM_SERVING_MODEL_VERSION": version,
        "MLPLATFORM_SERVING_ROLE": role,
        "MLPLATFORM_SERVING_FEAST_REPO_PATH": str(settings.feast_repo),
        "MLPLATFORM_SERVING_FEAST_CONFIG_FILE": settings.feast_config_file,
        "MLPLATFORM_SERVING_FEAST_DATA_DIR": str(settings.feast_data),
        "MLPLATFORM_SERVING_PREDICTION_LOG_DIR": str(settings.resolved_work_dir / "predictions"),
    }
