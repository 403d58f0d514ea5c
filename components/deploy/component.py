"""KFP component of the deploy-canary + analyse step: a thin wrapper around components.deploy.step."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from mlplatform.settings import DEFAULT_COMPONENT_IMAGE


@dsl.component(base_image=DEFAULT_COMPONENT_IMAGE, install_kfp_package=False)
def deploy_canary(registered: bool, version: str, register_summary: str, rollout_report: Output[Markdown]) -> str:
    """Deploy the first version as champion, or canary a later one against the champion and promote or roll back.

    Settings come from MLPLATFORM_* (deploy target, registry) and MLPLATFORM_CANARY_* (steps, thresholds,
    Prometheus URL) variables.

    Args:
        registered: Whether the register step registered a version.
        version: The version it registered.
        register_summary: The register step's JSON summary (passed through, with the deployment added).
        rollout_report: The rollout report (Markdown, shown in the Kubeflow UI); a line when there was no rollout.

    Returns:
        The register summary with a `deployment` entry: action, outcome (deployed, promoted, rolled_back), reason.
    """
    import json
    from dataclasses import asdict

    from components.deploy.step import run_deploy_canary
    from mlplatform.processes import init_process
    from mlplatform.settings import PlatformSettings

    init_process()  # the rollout controller's metrics live in this process
    outcome = run_deploy_canary(registered, version, PlatformSettings())
    with open(rollout_report.path, "w") as f:
        f.write(outcome.report_markdown or f"{outcome.action}: {outcome.reason}\n")
    deployment = asdict(outcome)
    deployment.pop("report_markdown")
    return json.dumps({**json.loads(register_summary), "deployment": deployment})
