"""Rollouts by hand: the state of the rollout in progress, and promoting or rolling back without the analysis."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from mlplatform import registry
from mlplatform.deploy.artifact import resolve
from mlplatform.deploy.cluster import kubernetes_client
from mlplatform.deploy.inferenceservice import get, predictor_traffic
from mlplatform.errors import MlPlatformError
from mlplatform.rollout.backends import ClusterBackend, report_root
from mlplatform.rollout.controller import ControlFile
from mlplatform.rollout.settings import CanarySettings
from mlplatform.settings import PlatformSettings

#: States of a local rollout whose controller still acts on requests in the control file.
RUNNING_STATES = ("analysing", "waiting")


def status(settings: PlatformSettings) -> dict[str, Any]:
    """The registry aliases, and the local rollout's state or the InferenceService's traffic split on a cluster."""
    registry.configure(settings)
    aliases = {
        a: (v.version if (v := registry.get_alias(settings.registered_model_name, a)) else None)
        for a in (registry.CHAMPION, registry.CHALLENGER, registry.PREVIOUS)
    }
    if settings.deploy_target == "cluster":
        live = get(settings.registered_model_name, settings.deploy_namespace, kubernetes_client())
        state: dict[str, Any] = {"target": "cluster", **asdict(predictor_traffic(live))}
    else:
        state = ControlFile(report_root(settings) / "current.json").read() or {"state": "no rollout yet"}
    return {"aliases": aliases, **state}


def decide(
    action: str,
    settings: PlatformSettings,
    canary: CanarySettings,
    version: str | None = None,
    record_only: bool = False,
    log: Callable[[str], Any] = print,
) -> None:
    """Promote or roll back by hand: through the running local controller, or directly on a cluster.

    Args:
        action: promote or rollback.
        version: The version concerned; the challenger when None.
        record_only: Only move the registry aliases (the traffic is already decided).
        log: Progress lines.

    Raises:
        MlPlatformError: No local rollout is running (and not record-only), or its controller did not act.
    """
    if action not in ("promote", "rollback"):
        raise MlPlatformError(f"action must be promote or rollback, got {action!r}")
    name = settings.registered_model_name
    control = ControlFile(report_root(settings) / "current.json")
    running = control.read().get("state") in RUNNING_STATES
    if settings.deploy_target == "local" and running and not record_only:
        control.request(action)
        deadline = time.monotonic() + max(30.0, 3 * canary.analysis_interval_seconds)
        while time.monotonic() < deadline:
            state = control.read().get("state")
            if state in ("promoted", "rolled_back"):
                log(f"the running rollout is {state}: {control.read().get('detail')}")
                return
            time.sleep(0.5)
        raise MlPlatformError(f"the local rollout controller did not act on the {action} request within 30 s")
    champion = resolve(settings, registry.CHAMPION)
    target_version = registry.get_version(name, version) if version else resolve(settings, registry.CHALLENGER)
    if not record_only:
        if settings.deploy_target != "cluster":
            raise MlPlatformError(
                "no local rollout is running (its processes live in `mlplatform rollout start`); "
                "use --record-only to move the registry aliases only"
            )
        backend = ClusterBackend(settings, canary, champion, target_version)
        backend.promote() if action == "promote" else backend.rollback()
    moves = (
        registry.promote_champion(name, target_version.version)
        if action == "promote"
        else registry.retire_challenger(name, target_version.version)
    )
    registry.tag_version(
        name,
        target_version.version,
        {
            "rollout.outcome": "promoted" if action == "promote" else "rolled_back",
            "rollout.reason": f"{action} by hand",
        },
    )
    log(f"version {target_version.version}: {action} done; registry: {', '.join(moves) or 'unchanged'}")
