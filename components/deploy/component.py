"""KFP component of the deploy step: a thin wrapper around components.deploy.step."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from mlplatform.settings import DEFAULT_COMPONENT_IMAGE


@dsl.component(base_image=DEFAULT_COMPONENT_IMAGE, install_kfp_package=False)
def deploy(registered: bool, alias: str, manifest: Output[Artifact]) -> str:
    """Deploy the version behind `alias` (MLPLATFORM_DEPLOY_TARGET: cluster or local).

    Args:
        registered: Whether the register step registered a version (nothing is deployed otherwise).
        alias: Registry alias to deploy, e.g. champion.
        manifest: The rendered InferenceService (YAML).

    Returns:
        JSON of the deployment (version, target, storage URI), or "{}" when nothing was deployed.
    """
    import json
    from dataclasses import asdict

    import yaml

    from components.deploy.step import run_deploy
    from mlplatform.settings import PlatformSettings

    result = run_deploy(registered, alias, PlatformSettings())
    with open(manifest.path, "w") as f:
        yaml.safe_dump(result.manifest if result else {}, f, sort_keys=False)
    if result is None:
        return "{}"
    summary = asdict(result)
    summary.pop("manifest")
    return json.dumps(summary)
