"""Checkpoint and resume: a run interrupted mid-way and resumed ends exactly where an uninterrupted one does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import mlplatform.training.loop as training
from mlplatform.training.loop import (
    CHECKPOINT_FILE,
    CheckpointMismatchError,
    EpochResult,
    TrainConfig,
    load_checkpoint,
    train_model,
)
from mlplatform.training.model import ModelConfig

REPO = Path(__file__).resolve().parents[2]
# Dropout on and a per-step cosine schedule: resuming must restore the RNG streams and the scheduler.
CONFIG = TrainConfig(
    max_epochs=6, batch_size=256, patience=10, seed=5, lr_schedule="cosine", checkpoint_interval_seconds=0
)
MODEL = ModelConfig(feature_names=[f"f{i}" for i in range(8)], hidden_units=[32, 16], dropout=0.2)


class Crash(RuntimeError):
    """Stands for the node going away."""


def synthetic(seed: int = 0, n: int = 3_000) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    logit = 1.5 * x[:, 0] - x[:, 1] + 0.5 * x[:, 2] * x[:, 3] - 2.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    cut = int(0.8 * n)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def crash_after(epoch: int):
    def on_epoch(r: EpochResult) -> None:
        if r.epoch == epoch:
            raise Crash(f"simulated preemption after epoch {epoch}")

    return on_epoch


def assert_same_result(a: training.TrainResult, b: training.TrainResult) -> None:
    assert [(h.epoch, h.train_loss, h.val_loss) for h in a.history] == [
        (h.epoch, h.train_loss, h.val_loss) for h in b.history
    ]
    assert a.best_epoch == b.best_epoch
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, ...]:
    return synthetic()


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory: pytest.TempPathFactory) -> training.TrainResult:
    return train_model(MODEL, *data, CONFIG, checkpoint_dir=tmp_path_factory.mktemp("full"))


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path: Path, data, uninterrupted) -> None:
    with pytest.raises(Crash):
        train_model(MODEL, *data, CONFIG, on_epoch=crash_after(3), checkpoint_dir=tmp_path)
    # on_epoch runs before the epoch's checkpoint: the crash after epoch 3 leaves the checkpoint of epoch 2.
    assert load_checkpoint(tmp_path)["epoch"] == 2
    seen: list[int] = []
    resumed = train_model(MODEL, *data, CONFIG, on_epoch=lambda r: seen.append(r.epoch), checkpoint_dir=tmp_path)
    assert resumed.resumed_from_epoch == 2
    assert seen == [3, 4, 5, 6]
    assert_same_result(resumed, uninterrupted)


def test_checkpointing_does_not_change_the_result(data, uninterrupted) -> None:
    assert_same_result(train_model(MODEL, *data, CONFIG), uninterrupted)


def test_finished_run_is_not_trained_again(tmp_path: Path, data, uninterrupted) -> None:
    train_model(MODEL, *data, CONFIG, checkpoint_dir=tmp_path)
    again = train_model(MODEL, *data, CONFIG, on_epoch=crash_after(1), checkpoint_dir=tmp_path)
    assert again.resumed_from_epoch == CONFIG.max_epochs
    assert_same_result(again, uninterrupted)


def test_early_stopping_state_survives_a_resume(tmp_path: Path, data) -> None:
    config = replace(CONFIG, max_epochs=40, patience=2, learning_rate=0.05, lr_schedule="constant")
    full = train_model(MODEL, *data, config)
    assert len(full.history) < config.max_epochs  # stopped early
    crash_at = len(full.history) - 1
    with pytest.raises(Crash):
        train_model(MODEL, *data, config, on_epoch=crash_after(crash_at), checkpoint_dir=tmp_path)
    assert_same_result(train_model(MODEL, *data, config, checkpoint_dir=tmp_path), full)


@pytest.mark.parametrize(
    "change",
    [
        lambda d, c: (tuple(np.roll(a, 1, axis=0) for a in d), c),
        lambda d, c: (d, replace(c, learning_rate=1e-3)),
        lambda d, c: (d, replace(c, seed=6)),
    ],
    ids=["other-data", "other-learning-rate", "other-seed"],
)
def test_checkpoint_of_another_run_is_refused(tmp_path: Path, data, change) -> None:
    with pytest.raises(Crash):
        train_model(MODEL, *data, CONFIG, on_epoch=crash_after(2), checkpoint_dir=tmp_path)
    other_data, other_config = change(data, CONFIG)
    with pytest.raises(CheckpointMismatchError, match="another run"):
        train_model(MODEL, *other_data, other_config, checkpoint_dir=tmp_path)


def test_device_and_checkpoint_interval_may_change_on_resume(tmp_path: Path, data, uninterrupted) -> None:
    with pytest.raises(Crash):
        train_model(MODEL, *data, CONFIG, on_epoch=crash_after(2), checkpoint_dir=tmp_path)
    other = replace(CONFIG, device="cpu", checkpoint_interval_seconds=3600)
    assert_same_result(train_model(MODEL, *data, other, checkpoint_dir=tmp_path), uninterrupted)


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path: Path, data, monkeypatch) -> None:
    with pytest.raises(Crash):
        train_model(MODEL, *data, CONFIG, on_epoch=crash_after(3), checkpoint_dir=tmp_path)
    real_save = torch.save

    def torn_save(obj, f) -> None:
        real_save(obj, f)
        f.truncate(100)  # half-written file
        raise Crash("node lost while writing the checkpoint")

    monkeypatch.setattr(training.torch, "save", torn_save)
    with pytest.raises(Crash):
        train_model(MODEL, *data, CONFIG, checkpoint_dir=tmp_path)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["epoch"] == 2


def test_checkpoint_is_loaded_without_unpickling_arbitrary_objects(tmp_path: Path, data) -> None:
    with pytest.raises(Crash):
        train_model(MODEL, *data, CONFIG, on_epoch=crash_after(2), checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path)
    state["evil"] = Crash("x")  # an arbitrary class: weights_only loading must refuse it
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_checkpoint(tmp_path)


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import numpy as np
    from mlplatform.training.loop import train_model
    from tests.unit.test_training_checkpoint import CONFIG, MODEL

    data = np.load(sys.argv[1])
    def die(r):
        if r.epoch == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # no exception handlers, no atexit: a lost node
    arrays = [data[k] for k in ("xt", "yt", "xv", "yv")]
    train_model(MODEL, *arrays, CONFIG, on_epoch=die, checkpoint_dir=Path(sys.argv[2]))
    """
)


@pytest.mark.slow
def test_process_killed_mid_training_resumes_to_the_same_result(tmp_path: Path, data, uninterrupted) -> None:
    np.savez(tmp_path / "data.npz", xt=data[0], yt=data[1], xv=data[2], yv=data[3])
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "data.npz"), str(tmp_path / "ckpt"), "4"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert load_checkpoint(tmp_path / "ckpt")["epoch"] == 3
    resumed = train_model(MODEL, *data, CONFIG, checkpoint_dir=tmp_path / "ckpt")
    assert resumed.resumed_from_epoch == 3
    assert_same_result(resumed, uninterrupted)


def test_checkpoint_written_on_another_device_type_is_refused(tmp_path: Path, data) -> None:
    with pytest.raises(Crash):
        train_model(MODEL, *data, CONFIG, on_epoch=crash_after(2), checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path)
    state["device_type"] = "cuda"  # as if written on a GPU node
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointMismatchError, match="written on cuda, this run is on cpu"):
        train_model(MODEL, *data, CONFIG, checkpoint_dir=tmp_path)
