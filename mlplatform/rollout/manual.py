"""Rollouts by hand: the state of the rollout in progress, and promoting or rolling back without the analysis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlplatform import registry
from mlplatform.deploy.artifact import resolve
from mlplatform.errors import MlPlatformError
from mlplatform.rollout.settings import CanarySettings
from mlplatform.rollout.targets import target_for
from mlplatform.settings import PlatformSettings


def status(settings: PlatformSettings) -> dict[str, Any]:
    """The registry aliases, and the live traffic of the deploy target (a local rollout's state, or the split)."""
    registry.configure(settings)
    aliases = {
        a: (v.version if (v := registry.get_alias(settings.registered_model_name, a)) else None)
        for a in (registry.CHAMPION, registry.CHALLENGER, registry.PREVIOUS)
    }
    return {"aliases": aliases, **target_for(settings).traffic()}


def decide(
    action: str,
    settings: PlatformSettings,
    canary: CanarySettings,
    version: str | None = None,
    record_only: bool = False,
    log: Callable[[str], Any] = print,
) -> None:
    """Promote or roll back by hand: through a running rollout controller, or by moving the traffic directly.

    Args:
        action: promote or rollback.
        version: The version concerned; the challenger when None.
        record_only: Only move the registry aliases (the traffic is already decided).
        log: Progress lines.

    Raises:
        MlPlatformError: The traffic cannot be moved here (no local rollout running, and not record-only), or the
            running controller did not act.
    """
    if action not in ("promote", "rollback"):
        raise MlPlatformError(f"action must be promote or rollback, got {action!r}")
    target = target_for(settings)
    if not record_only and target.request(action, canary, log):
        return
    name = settings.registered_model_name
    champion = resolve(settings, registry.CHAMPION)
    target_version = registry.get_version(name, version) if version else resolve(settings, registry.CHALLENGER)
    if not record_only:
        target.move_traffic(action, canary, champion, target_version)
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
    by = f" (by {registry.acting_identity()})" if moves else ""
    log(f"version {target_version.version}: {action} done; registry: {', '.join(moves) or 'unchanged'}{by}")
