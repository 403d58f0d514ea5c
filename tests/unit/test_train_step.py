"""The train step under a task retry: it resumes from the run's checkpoints and continues the same MLflow run."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from safetensors.torch import load_file

import components.train.step as train_step
from components.train.step import MLFLOW_RUN_FILE, run_train
from mlplatform.settings import PlatformSettings
from mlplatform.training.loop import EpochResult, TrainConfig
from mlplatform.training.model import WEIGHTS_FILE
from tests.conftest import Prepared

CONFIG = TrainConfig(max_epochs=4, batch_size=512, seed=3, patience=10, checkpoint_interval_seconds=0)


class Preempted(RuntimeError):
    """Stands for the GPU node going away."""


def test_checkpoint_dir_is_keyed_by_run_and_task(tmp_path: Path) -> None:
    settings = PlatformSettings(work_dir=tmp_path, checkpoint_root=tmp_path / "ckpt")
    assert settings.checkpoint_dir("fraud-training-x7k2p") == (tmp_path / "ckpt" / "fraud-training-x7k2p" / "train")
    assert settings.checkpoint_dir("a/../b").parent.name == "a_.._b"
    assert PlatformSettings(work_dir=tmp_path).checkpoint_dir("r") == tmp_path.resolve() / "checkpoints" / "r" / "train"
    with pytest.raises(ValueError, match="run key"):
        settings.checkpoint_dir("..")


@pytest.mark.slow
def test_retried_train_task_resumes_and_continues_its_mlflow_run(
    tmp_path: Path, prepared: Prepared, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = PlatformSettings(work_dir=tmp_path)
    split = prepared.splits["train"], prepared.splits["validation"]
    reference = run_train(*split, tmp_path / "reference", CONFIG, settings)

    ckpt = settings.checkpoint_dir("fraud-training-run-1")
    real_log_epoch = train_step.log_epoch

    def preempted_after_epoch_2(r: EpochResult) -> None:
        real_log_epoch(r)
        if r.epoch == 2:
            raise Preempted("node drained")

    monkeypatch.setattr(train_step, "log_epoch", preempted_after_epoch_2)
    with pytest.raises(Preempted):
        run_train(*split, tmp_path / "attempt1", CONFIG, settings, checkpoint_dir=ckpt)
    first_run_id = (ckpt / MLFLOW_RUN_FILE).read_text()
    monkeypatch.undo()

    retried = run_train(*split, tmp_path / "attempt2", CONFIG, settings, checkpoint_dir=ckpt)
    assert retried.mlflow_run_id == first_run_id
    assert (retried.threshold, retried.best_epoch, retried.best_val_loss) == (
        reference.threshold,
        reference.best_epoch,
        reference.best_val_loss,
    )
    a, b = load_file(tmp_path / "reference" / WEIGHTS_FILE), load_file(tmp_path / "attempt2" / WEIGHTS_FILE)
    assert all((a[k] == b[k]).all() for k in a)
    history = mlflow.MlflowClient(settings.tracking_uri).get_metric_history(first_run_id, "val_loss")
    assert sorted({m.step for m in history}) == [1, 2, 3, 4]
    assert mlflow.MlflowClient(settings.tracking_uri).get_run(first_run_id).info.status == "FINISHED"
