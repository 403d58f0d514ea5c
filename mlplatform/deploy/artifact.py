"""A registered version's artifact: resolve an alias, verify the files, prepare a local copy."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from mlplatform import registry
from mlplatform.errors import ConfigError, MlPlatformError
from mlplatform.features.compute import MODEL_FEATURES
from mlplatform.registry import RegisteredVersion
from mlplatform.settings import PlatformSettings

#: URI schemes KServe's storage initializer can fetch (besides a mapped mlflow-artifacts:/).
STORAGE_SCHEMES = ("s3://", "gs://", "pvc://", "https://", "http://", "hdfs://", "webhdfs://", "oci://", "hf://")


class ArtifactInvalid(MlPlatformError):
    """A model version's artifact cannot be served (missing files, corrupt weights, wrong features)."""


def resolve(settings: PlatformSettings, alias: str) -> RegisteredVersion:
    """The version behind `models:/<registered_model_name>@<alias>`.

    Raises:
        ConfigError: When no version carries the alias.
    """

    registry.configure(settings)
    version = registry.get_alias(settings.registered_model_name, alias)
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
    from mlplatform.training.model import load_model  # torch: seconds to import, only when used

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

    dst = local_model_dir(settings, version)
    if not (dst / "model_config.json").is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        downloaded = registry.download_version(version, dst.parent / f".{dst.name}.download")
        if dst.exists():
            import shutil

            shutil.rmtree(dst)
        downloaded.rename(dst)
    verify_artifact(dst)
    return dst
