"""The reference statistics each served model version was trained with, fetched once from the registry."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from mlplatform import registry
from mlplatform.deploy.artifact import ArtifactInvalid, prepare_local, verify_artifact
from mlplatform.errors import MlPlatformError
from mlplatform.monitoring.drift import ModelReference
from mlplatform.settings import PlatformSettings


class MonitorError(MlPlatformError):
    """The monitor cannot evaluate what it was asked to (missing log, unknown version, empty window)."""


class UnknownModelVersion(MonitorError):
    """A model version named in the prediction log or on the command line is not in the registry."""


class ReferenceUnavailable(MonitorError):
    """A model version's artifact has no reference statistics to compare live traffic with."""


class ReferenceResolver:
    """Finds (and caches) each model version's reference statistics, threshold and registration time.

    With `model_dir` every version is compared with that artifact. Otherwise the version's artifact
    comes from the MLflow registry, downloaded once under `<work_dir>/serving` (`deploy.prepare_local`).

    Args:
        platform: Tracking URI and work dir.
        model_dir: An artifact folder to use for every version, or None.
    """

    def __init__(self, platform: PlatformSettings, model_dir: Path | None = None) -> None:
        self.platform = platform
        self.model_dir = model_dir
        self._cache: dict[tuple[str, str], ModelReference] = {}
        self._lock = threading.Lock()

    @property
    def source(self) -> str:
        """Where references come from, for messages."""
        return str(self.model_dir) if self.model_dir is not None else self.platform.tracking_uri

    def get(self, model_name: str, model_version: str) -> ModelReference:
        """The reference of a version.

        Raises:
            UnknownModelVersion: When the registry has no such version.
            ReferenceUnavailable: When its artifact has no reference statistics or cannot be read.
        """
        key = (model_name, model_version)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._load(model_name, model_version)
            return self._cache[key]

    def _load(self, model_name: str, model_version: str) -> ModelReference:
        from mlplatform.training.model import load_reference_stats  # torch: seconds to import, only when used

        created: float | None = None
        try:
            if self.model_dir is not None:
                folder = self.model_dir.expanduser().resolve()
                config = verify_artifact(folder)
            else:
                version, created = self._registry_version(model_name, model_version)
                folder = prepare_local(self.platform, version)
                config = verify_artifact(folder)
        except ArtifactInvalid as exc:
            raise ReferenceUnavailable(str(exc)) from exc
        stats = load_reference_stats(folder)
        if not stats or not stats.get("features"):
            raise ReferenceUnavailable(
                f"the artifact of {model_name} version {model_version} in {folder} has no reference statistics "
                "(reference_stats.json); retrain it with the current train step"
            )
        return ModelReference(model_name, model_version, stats, float(config["threshold"]), created, folder)

    def _registry_version(self, model_name: str, model_version: str) -> tuple[Any, float | None]:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        registry.configure(self.platform)
        try:
            mv = MlflowClient().get_model_version(model_name, model_version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise UnknownModelVersion(
                    f"model {model_name!r} has no version {model_version!r} in {self.platform.tracking_uri}; "
                    "check MLPLATFORM_MLFLOW_TRACKING_URI, or compare with one artifact (--model-dir)"
                ) from exc
            raise
        if not mv.source:
            raise ReferenceUnavailable(f"{model_name} version {model_version} has no artifact source in the registry")
        version = registry.RegisteredVersion(
            mv.name, str(mv.version), mv.source, mv.run_id, list(mv.aliases), dict(mv.tags)
        )
        created = mv.creation_timestamp / 1000.0 if mv.creation_timestamp else None
        return version, created
