"""Train: fit the PyTorch MLP (CUDA when available), log the run to MLflow, save weights without pickle."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mlplatform import registry
from mlplatform.features.compute import MODEL_FEATURES, model_input
from mlplatform.monitoring.stats import reference_stats
from mlplatform.settings import PlatformSettings
from mlplatform.training.evaluation import binary_metrics, choose_threshold
from mlplatform.training.loop import EpochResult, TrainConfig, TrainResult, train_model
from mlplatform.training.model import ModelConfig, predict_proba, save_model
from mlplatform.training.search_space import apply_params
from mlplatform.training.tuning import load_best_params

if TYPE_CHECKING:
    import mlflow

#: Beside the checkpoints: the MLflow run a retried train task continues.
MLFLOW_RUN_FILE = "mlflow_run_id"


@dataclass(frozen=True)
class TrainOutcome:
    """The training run's identity and results."""

    mlflow_run_id: str
    threshold: float
    best_epoch: int
    epochs_run: int
    device: str
    final_train_loss: float
    best_val_loss: float
    #: PR-AUC of the saved model on the validation window (the tuning objective); None without fraud there.
    val_pr_auc: float | None = None


def _loss_curve_png(history: list[EpochResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h.epoch for h in history]
    ax.plot(epochs, [h.train_loss for h in history], label="train")
    ax.plot(epochs, [h.val_loss for h in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted BCE loss")
    ax.set_title("Loss curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_train(
    train_path: Path,
    validation_path: Path,
    model_dir: Path,
    config: TrainConfig,
    settings: PlatformSettings,
    hidden_units: list[int] | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    checkpoint_dir: Path | None = None,
) -> TrainOutcome:
    """Train on the training split with early stopping on the validation split.

    The model directory gets the weights (safetensors), the config with feature names and the
    operating threshold (chosen on validation, best F1), and the reference statistics of the
    training features and scores that drift monitoring compares live traffic with.

    With `checkpoint_dir` (stable across retries of the task, see `PlatformSettings.checkpoint_dir`)
    training checkpoints there, and a retried task resumes from the last checkpoint and continues
    the same MLflow run.
    """

    train, val = pd.read_parquet(train_path), pd.read_parquet(validation_path)
    x_tr, y_tr = model_input(train), train["is_fraud"].to_numpy(np.float32)
    x_va, y_va = model_input(val), val["is_fraud"].to_numpy(np.float32)
    model_config = ModelConfig(feature_names=list(MODEL_FEATURES), hidden_units=hidden_units or [64, 32])

    experiment_id = registry.configure(settings)
    with start_or_resume_run(experiment_id, run_name, tags, checkpoint_dir) as run:
        log_training_params(config, model_config, len(train), len(val))
        result = train_model(
            model_config, x_tr, y_tr, x_va, y_va, config, on_epoch=log_epoch, checkpoint_dir=checkpoint_dir
        )
        return finish_training(result, model_config, x_tr, x_va, y_va, model_dir, run.info.run_id)


def tuned_config(config: TrainConfig, tuning_run_id: str, settings: PlatformSettings) -> tuple[TrainConfig, list[int]]:
    """`config` with the best hyperparameters a tuning run recorded (`mlplatform tune`), and its layer widths.

    Raises:
        TuningError: When the run is not a tuning run of this search space.
    """
    registry.configure(settings)
    return apply_params(load_best_params(tuning_run_id), config, space=None)  # checked against its own space


def start_or_resume_run(
    experiment_id: str, run_name: str | None, tags: dict[str, str] | None, checkpoint_dir: Path | None
) -> mlflow.ActiveRun:
    """An active MLflow run: the one an earlier attempt of this task started (id kept with its checkpoints), or new."""
    import mlflow

    marker = checkpoint_dir / MLFLOW_RUN_FILE if checkpoint_dir is not None else None
    if marker is not None and marker.is_file():
        return mlflow.start_run(run_id=marker.read_text().strip(), tags=tags or {})
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags or {})
    if marker is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(run.info.run_id)
    return run


def log_training_params(config: TrainConfig, model_config: ModelConfig, train_rows: int, validation_rows: int) -> None:
    """Hyperparameters, architecture and data sizes as parameters of the active MLflow run."""
    import mlflow

    mlflow.log_params(
        {
            **asdict(config),
            "hidden_units": model_config.hidden_units,
            "dropout": model_config.dropout,
            "n_features": len(model_config.feature_names),
            "train_rows": train_rows,
            "validation_rows": validation_rows,
        }
    )


def log_epoch(r: EpochResult) -> None:
    """One epoch's losses as metrics of the active MLflow run."""
    import mlflow

    mlflow.log_metrics({"train_loss": r.train_loss, "val_loss": r.val_loss}, step=r.epoch)


def finish_training(
    result: TrainResult,
    model_config: ModelConfig,
    x_tr: np.ndarray,
    x_va: np.ndarray,
    y_va: np.ndarray,
    model_dir: Path,
    mlflow_run_id: str,
) -> TrainOutcome:
    """Choose the operating threshold, save the model with its reference statistics, log it to the active run."""
    import mlflow

    val_scores = predict_proba(result.model, x_va)
    model_config.threshold = choose_threshold(y_va, val_scores)
    pr_auc = binary_metrics(y_va, val_scores, model_config.threshold)["pr_auc"]
    val_pr_auc = float(pr_auc) if np.isfinite(pr_auc) else None
    model_config.metadata = {
        "mlflow_run_id": mlflow_run_id,
        "best_epoch": result.best_epoch,
        "train_rows": len(x_tr),
    }
    ref = reference_stats(x_tr, model_config.feature_names, predict_proba(result.model, x_tr))
    save_model(result.model, model_config, model_dir, ref)
    mlflow.log_artifacts(str(model_dir), artifact_path="model")
    curve = model_dir.parent / f"{model_dir.name}-loss_curve.png"
    _loss_curve_png(result.history, curve)
    mlflow.log_artifact(str(curve), artifact_path="plots")
    best_val = min(h.val_loss for h in result.history)
    mlflow.log_metrics(
        {
            "best_epoch": result.best_epoch,
            "best_val_loss": best_val,
            "operating_threshold": model_config.threshold,
            **({"val_pr_auc": val_pr_auc} if val_pr_auc is not None else {}),
        }
    )
    mlflow.set_tags({"device": result.device, "world_size": str(result.world_size)})
    return TrainOutcome(
        mlflow_run_id=mlflow_run_id,
        threshold=model_config.threshold,
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        device=result.device,
        final_train_loss=result.history[-1].train_loss,
        best_val_loss=best_val,
        val_pr_auc=val_pr_auc,
    )
