"""Distributed training pipeline: an existing training set -> multi-node DDP TrainJob -> evaluate."""

from kfp import dsl, kubernetes
from kfp.dsl import Dataset

from components.evaluate.component import evaluate
from components.train_distributed.component import train_distributed
from components.train_distributed.step import SHARED_MOUNT_PATH
from pipelines.training import with_settings

PIPELINE_NAME = "fraud-training-distributed"


@dsl.pipeline(name=PIPELINE_NAME, description="Train the fraud model on several GPU nodes and evaluate it.")
def distributed_training_pipeline(
    train_uri: str,
    validation_uri: str,
    test_uri: str,
    shared_pvc_name: str,
    num_nodes: int = 2,
    gpus_per_node: int = 1,
    max_epochs: int = 30,
    batch_size: int = 65_536,
    learning_rate: float = 0.002,
    seed: int = 42,
) -> str:
    """Train with a Kubeflow Trainer TrainJob on splits a training pipeline run already produced.

    For a training set that has outgrown one GPU; the single-GPU path stays `pipelines.training`.

    Args:
        train_uri: URI of the training split (the training-set task's `train` artifact).
        validation_uri: URI of the validation split.
        test_uri: URI of the test split.
        shared_pvc_name: ReadWriteMany PersistentVolumeClaim for data, checkpoints and the model.
        num_nodes: Training nodes.
        gpus_per_node: GPUs (DDP processes) per node.
        max_epochs: Upper bound on epochs.
        batch_size: Rows per optimisation step, across all GPUs.
        learning_rate: AdamW learning rate.
        seed: Seed of every random generator.

    Returns:
        The evaluate step's JSON report.
    """
    splits = {
        name: dsl.importer(artifact_uri=uri, artifact_class=Dataset, reimport=False).set_display_name(name)
        for name, uri in (("train", train_uri), ("validation", validation_uri), ("test", test_uri))
    }
    trained = train_distributed(
        train=splits["train"].output,
        validation=splits["validation"].output,
        max_epochs=max_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        num_nodes=num_nodes,
        gpus_per_node=gpus_per_node,
        shared_pvc_name=shared_pvc_name,
        run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
    ).set_display_name("train (TrainJob)")
    trained.set_caching_options(False)  # creates an MLflow run and a TrainJob
    # A retry (launcher pod evicted) re-attaches to the same TrainJob and MLflow run.
    trained.set_retry(num_retries=3, backoff_duration="60s", backoff_factor=2)
    trained.set_cpu_request("1").set_memory_request("4Gi").set_memory_limit("16Gi")
    kubernetes.mount_pvc(trained, pvc_name=shared_pvc_name, mount_path=SHARED_MOUNT_PATH)
    with_settings(trained)  # the launcher's MLflow run: the pipeline runner's identity, as in the training pipeline

    evaluated = evaluate(
        model=trained.outputs["model"],
        validation=splits["validation"].output,
        test=splits["test"].output,
        mlflow_run_id=trained.outputs["Output"],
    ).set_display_name("evaluate")
    evaluated.set_caching_options(False)
    with_settings(evaluated)
    return evaluated.outputs["Output"]
