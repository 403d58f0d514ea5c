"""Deploy-canary + analyse: the registered version earns production through a canary rollout, or is rolled back.

The first version of a model has nothing to be compared with and is deployed as the champion. A later
version (alias `challenger`) is rolled out against the champion by `mlplatform.rollout.controller.Controller`: on a
cluster the InferenceService's canary traffic moves step by step, judged on Prometheus; locally the
champion and the challenger are served behind the splitter while recent transactions are replayed
through it (locally nothing else calls the endpoint), judged on the same metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mlplatform.rollout.settings import CanarySettings
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
    from mlplatform import registry
    from mlplatform.deploy.artifact import resolve
    from mlplatform.deploy.cluster import deploy

    if not registered:
        return DeployOutcome("nothing", reason="no version was registered in this run")
    canary_settings = canary_settings or CanarySettings()
    champion = resolve(settings, registry.CHAMPION)
    if champion.version == str(version):
        from mlplatform.deploy.inferenceservice import NotInstalled

        try:
            result = deploy(settings, registry.CHAMPION)
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
    report = _roll_out(settings, canary_settings, champion, challenger, log)
    return DeployOutcome(
        "rollout", str(version), report.outcome, report.reason, json.loads(report.to_json()), report.to_markdown()
    )


def _roll_out(
    settings: PlatformSettings,
    canary_settings: CanarySettings,
    champion: Any,
    challenger: Any,
    log: Any,
) -> Any:
    from mlplatform.rollout.backends import ClusterBackend, LocalBackend, report_root
    from mlplatform.rollout.controller import ControlFile, Controller, MlflowRecorder

    root = report_root(settings)
    common = {"recorder": MlflowRecorder(settings.registered_model_name), "log": log}
    if settings.deploy_target == "cluster":
        backend = ClusterBackend(settings, canary_settings, champion, challenger)
        controller = Controller(
            backend,
            canary_settings,
            settings.registered_model_name,
            champion.version,
            challenger.version,
            root,
            **common,
        )
        return _with_metrics(controller, canary_settings).run()

    from mlplatform.local.traffic import TrafficGenerator, sample_transactions

    with LocalBackend(settings, canary_settings, champion, challenger) as backend:
        transactions = sample_transactions(settings, 2_000, seed=int(challenger.version))
        with TrafficGenerator(backend.predict_url, transactions, rps=canary_settings.local_replay_rps):
            controller = Controller(
                backend,
                canary_settings,
                settings.registered_model_name,
                champion.version,
                challenger.version,
                root,
                control=ControlFile(root / "current.json"),
                **common,
            )
            return _with_metrics(controller, canary_settings).run()


def _with_metrics(controller: Any, canary_settings: CanarySettings) -> Any:
    """Serve the controller's metrics on `metrics_port` while it runs (0: not served)."""
    if canary_settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(canary_settings.metrics_port, registry=controller.metrics.registry)
    return controller
