"""The distributed training pipeline compiles through the compile entry point, with the shared volume and retries."""

from __future__ import annotations

from pathlib import Path

import pytest
from kfp import components

from components.train_distributed.step import SHARED_MOUNT_PATH
from pipelines import compile_pipeline
from pipelines.training import MLFLOW_CREDENTIALS_ENV, MLFLOW_CREDENTIALS_SECRET, SETTINGS_CONFIG_MAP


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory):
    out = compile_pipeline(tmp_path_factory.mktemp("c") / "distributed.yaml", name="distributed_training")
    return components.load_component_from_file(str(out))


def test_distributed_pipeline_trains_with_a_trainjob_then_evaluates(compiled) -> None:
    spec = compiled.pipeline_spec
    assert spec.pipeline_info.name == "fraud-training-distributed"
    tasks = spec.root.dag.tasks
    assert {"train-distributed", "evaluate"} <= set(tasks)
    assert tasks["evaluate"].inputs.artifacts["model"].task_output_artifact.producer_task == "train-distributed"
    params = spec.root.input_definitions.parameters
    assert {"train_uri", "shared_pvc_name", "num_nodes", "gpus_per_node"} <= set(params)


def test_trainjob_launcher_mounts_the_shared_volume_and_is_retried(compiled) -> None:
    task = compiled.pipeline_spec.root.dag.tasks["train-distributed"]
    assert task.retry_policy.max_retry_count >= 1
    executor = task.component_ref.name.replace("comp-", "exec-")
    k8s = compiled.platform_spec.platforms["kubernetes"].deployment_spec.executors[executor]
    mount = k8s["pvcMount"][0]
    assert mount["mountPath"] == SHARED_MOUNT_PATH
    assert mount["pvcNameParameter"]["componentInputParameter"] == "shared_pvc_name"


def test_every_task_reads_the_settings_and_the_pipeline_runners_mlflow_credentials(compiled) -> None:
    """The launcher creates an MLflow run and evaluate logs to it: both authenticate as the pipeline runner, as the
    training pipeline's steps do (docs/adr/0017-registry-access-control.md), and read the cluster's settings."""
    executors = compiled.platform_spec.platforms["kubernetes"].deployment_spec.executors
    for task in ("train-distributed", "evaluate"):
        executor = compiled.pipeline_spec.root.dag.tasks[task].component_ref.name.replace("comp-", "exec-")
        platform = executors[executor]
        [secret] = platform["secretAsEnv"]
        assert secret["secretName"] == MLFLOW_CREDENTIALS_SECRET and secret["optional"] is True, task
        assert {m["secretKey"]: m["envVar"] for m in secret["keyToEnv"]} == MLFLOW_CREDENTIALS_ENV, task
        [config_map] = platform["configMapAsEnv"]
        assert config_map["configMapName"] == SETTINGS_CONFIG_MAP, task


def test_unknown_pipeline_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown pipeline 'nope'"):
        compile_pipeline(tmp_path / "x.yaml", name="nope")
