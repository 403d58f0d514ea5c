"""Deploy by registry alias: resolve `models:/<name>@<alias>`, verify the artifact, serve it.

On a cluster the version becomes an InferenceService (`serving.inferenceservice`), applied
server-side through the Kubernetes API and awaited until Ready. Locally the artifact is downloaded
into the work dir, verified, and served by a predictor and a transformer process on localhost
(`serving.local`). A pipeline step cannot hold long-running servers, so the local pipeline's deploy
step prepares and verifies the artifact, and `mlplatform serve` (the end of `make run`) serves it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlplatform.errors import ConfigError, MlPlatformError
from mlplatform.features import MODEL_FEATURES
from mlplatform.settings import PlatformSettings
from mlplatform.tracking import RegisteredVersion

#: URI schemes KServe's storage initializer can fetch (besides a mapped mlflow-artifacts:/).
STORAGE_SCHEMES = ("s3://", "gs://", "pvc://", "https://", "http://", "hdfs://", "webhdfs://", "oci://", "hf://")


class ArtifactInvalid(MlPlatformError):
    """A model version's artifact cannot be served (missing files, corrupt weights, wrong features)."""


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


def resolve(settings: PlatformSettings, alias: str) -> RegisteredVersion:
    """The version behind `models:/<registered_model_name>@<alias>`.

    Raises:
        ConfigError: When no version carries the alias.
    """
    from mlplatform import tracking

    tracking.configure(settings)
    version = tracking.get_alias(settings.registered_model_name, alias)
    if version is None:
        raise ConfigError(
            f"no version of model {settings.registered_model_name!r} has alias {alias!r} in {settings.tracking_uri}; "
            "train and register one first (`mlplatform run`)"
        )
    return version


def storage_uri(source: str, settings: PlatformSettings) -> str:
    """The storageUri for a version's artifact location.

    Raises:
        ConfigError: When KServe could not fetch it (a local file path, or mlflow-artifacts:/ without
            `mlflow_artifacts_destination`).
    """
    if source.startswith("mlflow-artifacts:"):
        if not settings.mlflow_artifacts_destination:
            raise ConfigError(
                f"model source {source} is proxied by the MLflow server; set MLPLATFORM_MLFLOW_ARTIFACTS_DESTINATION "
                "to the server's --artifacts-destination (e.g. s3://mlflow) so KServe can fetch it"
            )
        path = source.removeprefix("mlflow-artifacts:").lstrip("/")
        return f"{settings.mlflow_artifacts_destination.rstrip('/')}/{path}"
    if source.startswith(STORAGE_SCHEMES):
        return source
    raise ConfigError(f"model source {source} is not fetchable from a cluster (use an s3://, gs:// or pvc:// store)")


def verify_artifact(model_dir: Path) -> dict[str, Any]:
    """Load the artifact as the predictor will (weights without pickle) and check its features.

    Returns:
        The model config.

    Raises:
        ArtifactInvalid: With what is wrong; nothing gets traffic then.
    """
    from mlplatform.model import load_model

    try:
        _, config = load_model(model_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise ArtifactInvalid(f"model artifact in {model_dir} cannot be served: {exc}") from exc
    if list(config.feature_names) != list(MODEL_FEATURES):
        raise ArtifactInvalid(
            f"model artifact in {model_dir} expects features {config.feature_names}, this code builds {MODEL_FEATURES}"
        )
    return asdict(config)


def local_model_dir(settings: PlatformSettings, version: RegisteredVersion) -> Path:
    """Where a version's artifact is kept for local serving."""
    return settings.resolved_work_dir / "serving" / f"{version.name}-v{version.version}"


def prepare_local(settings: PlatformSettings, version: RegisteredVersion) -> Path:
    """Download (once) and verify a version's artifact for local serving; returns the folder."""
    from mlplatform import tracking

    dst = local_model_dir(settings, version)
    if not (dst / "model_config.json").is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        downloaded = tracking.download_version(version, dst.parent / f".{dst.name}.download")
        if dst.exists():
            import shutil

            shutil.rmtree(dst)
        downloaded.rename(dst)
    verify_artifact(dst)
    return dst


def render_manifest(
    settings: PlatformSettings,
    version: RegisteredVersion,
    uri: str,
    canary_traffic_percent: int | None = None,
    role: str = "stable",
) -> dict[str, Any]:
    """What a version changes in the InferenceService (`role` canary while it is rolled out): the apply
    configuration of `serving.inferenceservice.render`; the chart owns the rest of the object."""
    from serving.inferenceservice import ServiceSpec, render

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
    from serving.inferenceservice import NotInstalled, get, install_hint

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
    """Deploy the version behind `alias` to `settings.deploy_target`.

    Locally: download and verify the artifact (serve it with `serve_local`). On a cluster: verify the
    artifact, server-side apply the version change to the InferenceService the chart installed and (with
    `wait`) wait until Ready.

    Raises:
        ConfigError: Unknown alias, or an artifact location a cluster cannot fetch.
        ArtifactInvalid: The artifact cannot be served.
        serving.inferenceservice.NotInstalled: No InferenceService yet; the message holds the Helm command.
        serving.inferenceservice.DeployError: The Kubernetes API refused it or it never became Ready.
    """
    version = resolve(settings, alias)
    model_dir = prepare_local(settings, version)  # verified before anything gets traffic
    if settings.deploy_target == "local":
        manifest = render_manifest(settings, version, model_dir.as_uri(), canary_traffic_percent)
        return DeployResult(version.name, version.version, alias, "local", version.source, str(model_dir), manifest)
    from serving.inferenceservice import apply, wait_ready

    uri = storage_uri(version.source, settings)
    manifest = render_manifest(settings, version, uri, canary_traffic_percent)
    api_client = api_client or kubernetes_client()
    require_installed(settings, api_client, uri, version.version)
    apply(manifest, api_client)
    if wait:
        wait_ready(
            manifest["metadata"]["name"], settings.deploy_namespace, api_client, settings.deploy_ready_timeout_seconds
        )
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


def serve_local(
    settings: PlatformSettings, alias: str = "champion", port: int = 0, role: str = "stable"
) -> tuple[DeployResult, Any]:
    """Deploy locally and start the transformer (on `port`, 0 = any free one) and the predictor.

    Returns:
        The deployment and the running `serving.local.LocalService` (stop it, or use it as a context manager).
    """
    from serving.local import start_local

    result = deploy(settings.model_copy(update={"deploy_target": "local"}), alias)
    service = start_local(
        Path(result.storage_uri),
        model_name=settings.registered_model_name,
        env=serving_env(settings, result.model_version, role),
        log_dir=settings.resolved_work_dir / "logs",
        transformer_port=port,
    )
    return result, service
