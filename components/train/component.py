"""KFP component of the train step: a thin wrapper around components.train.step."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from mlplatform.settings import DEFAULT_COMPONENT_IMAGE


@dsl.component(base_image=DEFAULT_COMPONENT_IMAGE, install_kfp_package=False)
def train(
    train: Input[Dataset],
    validation: Input[Dataset],
    max_epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    run_name: str,
    model: Output[Model],
    metrics: Output[Metrics],
    tuning_run_id: str = "",
) -> str:
    """Train the fraud model and log the run to MLflow.

    Args:
        train: Training rows.
        validation: Validation rows (early stopping, operating threshold).
        max_epochs: Upper bound on epochs.
        batch_size: Rows per step.
        learning_rate: AdamW learning rate.
        seed: Seed of every random generator.
        run_name: MLflow run name; the pipeline job name, which also keys the checkpoints a retry resumes from.
        tuning_run_id: MLflow run of `mlplatform tune`; its best hyperparameters (learning rate, weight decay,
            layers, batch size, epochs) replace the ones above. Empty: train with the ones above.
        model: The model directory (safetensors weights, config, reference statistics).
        metrics: Training metrics for the Kubeflow UI.

    Returns:
        The MLflow run id.
    """
    from dataclasses import asdict
    from pathlib import Path

    from components.train.step import run_train, tuned_config
    from mlplatform.settings import PlatformSettings
    from mlplatform.training.loop import TrainConfig

    settings = PlatformSettings()
    config = TrainConfig(max_epochs=max_epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    hidden_units = None
    if tuning_run_id:
        config, hidden_units = tuned_config(config, tuning_run_id, settings)
    outcome = run_train(
        Path(train.path),
        Path(validation.path),
        Path(model.path),
        config,
        settings,
        hidden_units=hidden_units,
        run_name=run_name or None,
        tags={"tuning_run_id": tuning_run_id} if tuning_run_id else None,
        # The pipeline job name is unique per run and the same for every retry: a retry resumes.
        checkpoint_dir=settings.checkpoint_dir(run_name) if run_name else None,
    )
    for key in ("best_epoch", "epochs_run", "final_train_loss", "best_val_loss", "threshold", "val_pr_auc"):
        if getattr(outcome, key) is not None:
            metrics.log_metric(key, float(getattr(outcome, key)))
    model.metadata.update(asdict(outcome))
    model.metadata["framework"] = "pytorch"
    return outcome.mlflow_run_id
