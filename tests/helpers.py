"""Helpers shared by several test folders (importable as `tests.helpers`; not collected: no test_ prefix)."""

from __future__ import annotations

from pathlib import Path

from mlplatform.settings import PlatformSettings


def train_and_register(settings: PlatformSettings, work: Path, max_epochs: int = 3) -> str:
    """The real training-set and train steps on `work`/raw.parquet, then registration of the trained model.

    The first version registered under `settings.registered_model_name` becomes champion.

    Args:
        settings: Platform settings (Feast configuration, MLflow tracking in the work dir).
        work: Folder holding raw.parquet; the splits and the trained artifact are written there.
        max_epochs: Training epochs (the assertions that use this model need a working model, not a good one).

    Returns:
        The registered version.
    """
    import mlflow

    from components.train.step import run_train
    from components.training_set.step import run_training_set
    from mlplatform import registry
    from mlplatform.training.loop import TrainConfig

    splits = {n: work / f"{n}.parquet" for n in ("train", "validation", "test")}
    run_training_set(work / "raw.parquet", settings, 7, 7, splits["train"], splits["validation"], splits["test"])
    outcome = run_train(
        splits["train"], splits["validation"], work / "trained", TrainConfig(max_epochs=max_epochs), settings, [32, 16]
    )
    artifact_uri = mlflow.get_run(outcome.mlflow_run_id).info.artifact_uri
    registered = registry.register_version(
        settings.registered_model_name, f"{artifact_uri}/model", outcome.mlflow_run_id, {}, []
    )
    return str(registered.version)
