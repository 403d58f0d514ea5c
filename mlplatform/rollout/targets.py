"""Deploy targets: where a registered version runs, localhost or a cluster, chosen once from the settings.

`target_for(settings)` is the one place the deploy target (MLPLATFORM_DEPLOY_TARGET) picks behaviour, one class
per target: deploying and previewing a version, the canary settings of its rollouts, the rollout backend, the live
traffic, and moving traffic by hand. Callers (the CLI, the deploy step, the local runner, the rollout wiring)
ask the target instead of comparing `deploy_target` themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from typing import Any, ClassVar, Protocol

from mlplatform.deploy import cluster
from mlplatform.deploy.artifact import resolve, storage_uri
from mlplatform.deploy.cluster import DeployResult, kubernetes_client, render_manifest
from mlplatform.deploy.inferenceservice import get, predictor_traffic
from mlplatform.errors import MlPlatformError
from mlplatform.local.serving import prepare
from mlplatform.registry import RegisteredVersion
from mlplatform.rollout.backends import ClusterBackend, LocalBackend, report_root
from mlplatform.rollout.controller import ControlFile
from mlplatform.rollout.settings import CanarySettings, local_profile
from mlplatform.settings import PlatformSettings, load_settings

#: States of a local rollout whose controller still acts on requests in the control file.
RUNNING_STATES = ("analysing", "waiting")


class Target(Protocol):
    """What differs between deploy targets."""

    name: ClassVar[str]
    #: Serving lives in this process: `mlplatform deploy` serves until Ctrl-C, rollouts replay traffic.
    in_process: ClassVar[bool]

    def deploy(self, alias: str = "champion", canary_traffic_percent: int | None = None, wait: bool = True) -> Any:
        """Deploy the version behind `alias`; returns a `DeployResult`."""
        ...

    def preview(self, alias: str = "champion", canary_traffic_percent: int | None = None) -> dict[str, Any]:
        """The InferenceService version change `deploy` would make, applying nothing."""
        ...

    def canary_settings(self) -> CanarySettings:
        """The canary settings of this target's rollouts."""
        ...

    def backend(
        self, canary_settings: CanarySettings, stable: RegisteredVersion, canary: RegisteredVersion, port: int = 0
    ) -> AbstractContextManager[ClusterBackend | LocalBackend]:
        """The rollout backend, as a context manager that releases what it started."""
        ...

    def traffic(self) -> dict[str, Any]:
        """The live traffic: the local rollout's state, or the InferenceService's split."""
        ...

    def request(self, action: str, canary_settings: CanarySettings, log: Callable[[str], Any]) -> bool:
        """Hand `action` (promote, rollback) to a running rollout controller; False when none runs here."""
        ...

    def move_traffic(
        self, action: str, canary_settings: CanarySettings, stable: RegisteredVersion, canary: RegisteredVersion
    ) -> None:
        """Promote `canary` or roll back to `stable` directly, with no controller running."""
        ...


class LocalTarget:
    """Localhost: a verified local copy served by predictor and transformer processes."""

    name = "local"
    in_process = True

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings

    def deploy(
        self, alias: str = "champion", canary_traffic_percent: int | None = None, wait: bool = True
    ) -> DeployResult:
        return prepare(self.settings, alias, canary_traffic_percent)

    def preview(self, alias: str = "champion", canary_traffic_percent: int | None = None) -> dict[str, Any]:
        return prepare(self.settings, alias, canary_traffic_percent).manifest

    def canary_settings(self) -> CanarySettings:
        return local_profile()

    def backend(
        self, canary_settings: CanarySettings, stable: RegisteredVersion, canary: RegisteredVersion, port: int = 0
    ) -> LocalBackend:
        return LocalBackend(self.settings, canary_settings, stable, canary, port=port)

    def _control(self) -> ControlFile:
        return ControlFile(report_root(self.settings) / "current.json")

    def traffic(self) -> dict[str, Any]:
        return self._control().read() or {"state": "no rollout yet"}

    def request(self, action: str, canary_settings: CanarySettings, log: Callable[[str], Any]) -> bool:
        control = self._control()
        if control.read().get("state") not in RUNNING_STATES:
            return False
        control.request(action)
        wait_seconds = max(30.0, 3 * canary_settings.analysis_interval_seconds)
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            state = control.read().get("state")
            if state in ("promoted", "rolled_back"):
                log(f"the running rollout is {state}: {control.read().get('detail')}")
                return True
            time.sleep(0.5)
        raise MlPlatformError(
            f"the local rollout controller did not act on the {action} request within {wait_seconds:g} s"
        )

    def move_traffic(
        self, action: str, canary_settings: CanarySettings, stable: RegisteredVersion, canary: RegisteredVersion
    ) -> None:
        raise MlPlatformError(
            "no local rollout is running (its processes live in `mlplatform rollout start`); "
            "use --record-only to move the registry aliases only"
        )


class ClusterTarget:
    """A Kubernetes cluster: the chart's InferenceService, changed by server-side apply."""

    name = "cluster"
    in_process = False

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings

    def deploy(
        self, alias: str = "champion", canary_traffic_percent: int | None = None, wait: bool = True
    ) -> DeployResult:
        return cluster.deploy(self.settings, alias, canary_traffic_percent, wait=wait)

    def preview(self, alias: str = "champion", canary_traffic_percent: int | None = None) -> dict[str, Any]:
        version = resolve(self.settings, alias)
        uri = storage_uri(version.source, self.settings)
        return render_manifest(self.settings, version, uri, canary_traffic_percent)

    def canary_settings(self) -> CanarySettings:
        return load_settings(CanarySettings)

    def backend(
        self, canary_settings: CanarySettings, stable: RegisteredVersion, canary: RegisteredVersion, port: int = 0
    ) -> AbstractContextManager[ClusterBackend]:
        return nullcontext(ClusterBackend(self.settings, canary_settings, stable, canary))

    def traffic(self) -> dict[str, Any]:
        live = get(self.settings.registered_model_name, self.settings.deploy_namespace, kubernetes_client())
        return {"target": "cluster", **asdict(predictor_traffic(live))}

    def request(self, action: str, canary_settings: CanarySettings, log: Callable[[str], Any]) -> bool:
        return False  # a cluster rollout's controller runs in a pipeline step; traffic is moved directly

    def move_traffic(
        self, action: str, canary_settings: CanarySettings, stable: RegisteredVersion, canary: RegisteredVersion
    ) -> None:
        backend = ClusterBackend(self.settings, canary_settings, stable, canary)
        backend.promote() if action == "promote" else backend.rollback()


TARGETS: dict[str, Callable[[PlatformSettings], Target]] = {"local": LocalTarget, "cluster": ClusterTarget}


def target_for(settings: PlatformSettings) -> Target:
    """The deploy target of `settings` (MLPLATFORM_DEPLOY_TARGET): the one place that choice is made."""
    return TARGETS[settings.deploy_target](settings)
