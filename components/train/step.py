"""Train: fit the PyTorch MLP (CUDA when available), log the run to MLflow, save weights without pickle."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlplatform.evaluation import choose_threshold
from mlplatform.features import MODEL_FEATURES, model_input
from mlplatform.model import ModelConfig, predict_proba, save_model
from mlplatform.settings import PlatformSettings
from mlplatform.stats import reference_stats
from mlplatform.training import EpochResult, TrainConfig, train_model


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
) -> TrainOutcome:
    """Train on the training split with early stopping on the validation split.

    The model directory gets the weights (safetensors), the config with feature names and the
    operating threshold (chosen on validation, best F1), and the reference statistics of the
    training features and scores that drift monitoring compares live traffic with.
    """
    import mlflow

    from mlplatform import tracking

    train, val = pd.read_parquet(train_path), pd.read_parquet(validation_path)
    x_tr, y_tr = model_input(train), train["is_fraud"].to_numpy(np.float32)
    x_va, y_va = model_input(val), val["is_fraud"].to_numpy(np.float32)
    model_config = ModelConfig(feature_names=list(MODEL_FEATURES), hidden_units=hidden_units or [64, 32])

    experiment_id = tracking.configure(settings)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags or {}) as run:
        mlflow.log_params(
            {
                **asdict(config),
                "hidden_units": model_config.hidden_units,
                "dropout": model_config.dropout,
                "n_features": len(MODEL_FEATURES),
                "train_rows": len(train),
                "validation_rows": len(val),
            }
        )

        def log_epoch(r: EpochResult) -> None:
            mlflow.log_metrics({"train_loss": r.train_loss, "val_loss": r.val_loss}, step=r.epoch)

        result = train_model(model_config, x_tr, y_tr, x_va, y_va, config, on_epoch=log_epoch)
        val_scores = predict_proba(result.model, x_va)
        model_config.threshold = choose_threshold(y_va, val_scores)
        model_config.metadata = {
            "mlflow_run_id": run.info.run_id,
            "best_epoch": result.best_epoch,
            "train_rows": len(train),
        }
        ref = reference_stats(x_tr, MODEL_FEATURES, predict_proba(result.model, x_tr))
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
            }
        )
        mlflow.set_tag("device", result.device)
    return TrainOutcome(
        mlflow_run_id=run.info.run_id,
        threshold=model_config.threshold,
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        device=result.device,
        final_train_loss=result.history[-1].train_loss,
        best_val_loss=best_val,
    )
