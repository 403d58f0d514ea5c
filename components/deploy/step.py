"""Deploy-canary + analyse: the registered version earns production through a canary rollout, or is rolled back.

The first version of a model has nothing to be compared with and is deployed as the champion. A later
version (alias `challenger`) is rolled out against the champion by `mlplatform.rollout.start.run_rollout`: on a
cluster the InferenceService's canary traffic moves step by step, judged on Prometheus; locally the
champion and the challenger are served behind the splitter while recent transactions are replayed
through it (locally nothing else calls the endpoint), judged on the same metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mlplatform import registry
from mlplatform.deploy.artifact import resolve
from mlplatform.deploy.inferenceservice import NotInstalled
from mlplatform.rollout.settings import CanarySettings
from mlplatform.rollout.start import run_rollout
from mlplatform.rollout.targets import target_for
from mlplatform.settings import PlatformSettings


@dataclass(frozen=True)
class DeployOutcome:
    """What the step did.

    Attributes:
        action: nothing (no version registered), deployed (first version, now champion) or rollout.
        version: The version this run registered ("" when none).
        outcome: deployed, not_installed (a cluster without the chart's InferenceService yet), promoted or
            rolled_back ("" for nothing).
        reason: Why, in words.
        report: The rollout report (JSON-able dict); empty without a rollout.
        report_markdown: The rollout report for people; "" without a rollout.
    """

    action: str
    version: str = ""
    outcome: str = ""
    reason: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    report_markdown: str = ""


def run_deploy_canary(
    registered: bool,
    version: str,
    settings: PlatformSettings,
    canary_settings: CanarySettings | None = None,
    log: Any = print,
) -> DeployOutcome:
    """Deploy the first version as champion, or roll a later one out as a canary against the champion.

    Args:
        registered: Whether the register step registered a version in this run.
        version: The version it registered.
        settings: Platform settings (deploy target, namespace, registry).
        canary_settings: Steps and thresholds; from MLPLATFORM_CANARY_* when None.
        log: Progress lines.

    Raises:
        mlplatform.rollout.controller.RolloutError: The rollout could not run or its outcome could not be recorded.
        mlplatform.deploy.artifact.ArtifactInvalid: The version's artifact cannot be served (nothing got traffic).
    """
    if not registered:
        return DeployOutcome("nothing", reason="no version was registered in this run")
    target = target_for(settings)
    canary_settings = canary_settings or target.canary_settings()
    champion = resolve(settings, registry.CHAMPION)
    if champion.version == str(version):
        try:
            result = target.deploy(registry.CHAMPION)
        except NotInstalled as exc:
            # The runner may only read and patch the InferenceService: the first one is a person's Helm
            # install. The version is registered and champion either way; the step says what to run.
            log(f"not deployed: {exc}")
            return DeployOutcome("deployed", str(version), "not_installed", str(exc))
        return DeployOutcome(
            "deployed",
            str(version),
            "deployed",
            f"first version of {settings.registered_model_name}: deployed as champion ({result.target})",
        )
    challenger = registry.get_version(settings.registered_model_name, str(version))
    report = run_rollout(
        settings,
        canary_settings,
        champion,
        challenger,
        log=log,
        replay_seed=int(challenger.version),
        serve_metrics=True,
    )
    return DeployOutcome(
        "rollout", str(version), report.outcome, report.reason, json.loads(report.to_json()), report.to_markdown()
    )
