"""Deploy: serve the version behind a registry alias (InferenceService on a cluster, verified artifact locally)."""

from __future__ import annotations

from mlplatform.deploy import DeployResult, deploy
from mlplatform.settings import PlatformSettings


def run_deploy(registered: bool, alias: str, settings: PlatformSettings) -> DeployResult | None:
    """Deploy `alias` when the register step registered a version; None (nothing deployed) otherwise.

    Args:
        registered: Whether the register step registered a version in this run.
        alias: Registry alias to deploy.
        settings: Platform settings (deploy target, namespace, registry).
    """
    if not registered:
        return None
    return deploy(settings, alias)
