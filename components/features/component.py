"""KFP component of the features step: a thin wrapper around components.features.step."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from mlplatform.settings import DEFAULT_COMPONENT_IMAGE


@dsl.component(base_image=DEFAULT_COMPONENT_IMAGE, install_kfp_package=False)
def features(raw: Input[Dataset], feature_state: Output[Artifact]) -> str:
    """Compute features, apply the Feast repo and materialize the online store.

    Args:
        raw: The raw snapshot.
        feature_state: Record of what was applied and materialized.

    Returns:
        JSON of the feature view and feature service versions (content hashes).
    """
    import json
    from dataclasses import asdict
    from pathlib import Path

    from components.features.step import run_features
    from mlplatform.settings import PlatformSettings

    result = run_features(Path(raw.path), PlatformSettings())
    Path(feature_state.path).write_text(json.dumps(asdict(result), indent=2))
    feature_state.metadata.update(asdict(result))
    return json.dumps(result.versions, sort_keys=True)
