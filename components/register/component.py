"""KFP component of the register step: a thin wrapper around components.register.step."""

from typing import NamedTuple

from kfp import dsl

from mlplatform.settings import DEFAULT_COMPONENT_IMAGE


@dsl.component(base_image=DEFAULT_COMPONENT_IMAGE, install_kfp_package=False)
def register(
    mlflow_run_id: str,
    evaluation: str,
    ingest_summary: str,
    feature_versions: str,
    pipeline_run_id: str,
    trigger: str = "manual",
) -> NamedTuple("RegisterOutputs", [("registered", bool), ("version", str), ("summary", str)]):
    """Apply the promotion gate and register the model version with lineage tags.

    Args:
        mlflow_run_id: The training run.
        evaluation: The evaluation report (JSON).
        ingest_summary: What ingest produced (JSON: content hash, rows, time window).
        feature_versions: JSON of the feature view and service versions.
        pipeline_run_id: The pipeline run that produced the model.
        trigger: Why the run was started (mlplatform.params.trigger_tags), tagged on the MLflow run.

    Returns:
        Whether it was registered, the version, and a JSON summary.
    """
    import json
    from collections import namedtuple
    from dataclasses import asdict

    from components.ingest.step import IngestResult
    from components.register.step import run_register
    from mlplatform.settings import PlatformSettings

    result = run_register(
        mlflow_run_id,
        json.loads(evaluation),
        IngestResult(**json.loads(ingest_summary)),
        json.loads(feature_versions),
        pipeline_run_id,
        PlatformSettings(),
        trigger=trigger,
    )
    outputs = namedtuple("RegisterOutputs", ["registered", "version", "summary"])
    return outputs(result.registered, result.version, json.dumps(asdict(result)))
