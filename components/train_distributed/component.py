"""KFP component of the distributed train step: a thin wrapper around components.train_distributed.step."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from mlplatform.settings import DEFAULT_COMPONENT_IMAGE


@dsl.component(base_image=DEFAULT_COMPONENT_IMAGE, install_kfp_package=False)
def train_distributed(
    train: Input[Dataset],
    validation: Input[Dataset],
    max_epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    num_nodes: int,
    gpus_per_node: int,
    shared_pvc_name: str,
    run_name: str,
    model: Output[Model],
    metrics: Output[Metrics],
) -> str:
    """Train the fraud model with DDP on several GPU nodes (a Kubeflow Trainer TrainJob) and log it to MLflow.

    The task needs the shared volume mounted at `components.train_distributed.step.SHARED_MOUNT_PATH`
    and a service account allowed to create, get and delete `trainjobs.trainer.kubeflow.org` in its
    namespace.

    Args:
        train: Training rows.
        validation: Validation rows (early stopping, operating threshold).
        max_epochs: Upper bound on epochs.
        batch_size: Rows per step, across all processes.
        learning_rate: AdamW learning rate.
        seed: Seed of every random generator.
        num_nodes: Training nodes (pods).
        gpus_per_node: GPUs, and so DDP processes, per node.
        shared_pvc_name: ReadWriteMany PersistentVolumeClaim shared by this task and the TrainJob's pods.
        run_name: The pipeline job name: names the TrainJob, its files and the MLflow run; a retry resumes.
        model: The model directory (safetensors weights, config, reference statistics).
        metrics: Training metrics for the Kubeflow UI.

    Returns:
        The MLflow run id.
    """
    from dataclasses import asdict
    from pathlib import Path

    from kubernetes import client
    from kubernetes import config as kube_config

    from components.train_distributed.step import run_train_distributed
    from mlplatform.settings import PlatformSettings
    from mlplatform.training.loop import TrainConfig

    kube_config.load_incluster_config()
    namespace = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
    config = TrainConfig(max_epochs=max_epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    outcome = run_train_distributed(
        Path(train.path),
        Path(validation.path),
        Path(model.path),
        config,
        PlatformSettings(),
        client.CustomObjectsApi(),
        run_key=run_name,
        namespace=namespace,
        pvc_name=shared_pvc_name,
        num_nodes=num_nodes,
        gpus_per_node=gpus_per_node,
        core_api=client.CoreV1Api(),
    )
    for key in ("best_epoch", "epochs_run", "final_train_loss", "best_val_loss", "threshold"):
        metrics.log_metric(key, float(getattr(outcome, key)))
    model.metadata.update(asdict(outcome))
    model.metadata["framework"] = "pytorch"
    return outcome.mlflow_run_id
