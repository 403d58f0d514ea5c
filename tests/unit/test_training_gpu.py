"""The CUDA path: trains, checkpoints and resumes to the same weights, bf16/compile options, torchrun with NCCL.

Marked `gpu`: skipped where CUDA is absent. Needs only torch, numpy, safetensors and pytest, so on a bare
GPU machine: `pytest --noconftest -m gpu tests/unit/test_training_gpu.py` (see `make test-gpu`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mlplatform.training.ddp import RESULT_FILE, save_training_data
from mlplatform.training.loop import EpochResult, TrainConfig, load_checkpoint, train_model
from mlplatform.training.model import ModelConfig, load_model

# Deterministic cuBLAS needs its workspace fixed before the first cuBLAS call of the process.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

REPO = Path(__file__).resolve().parents[2]
MODEL = ModelConfig(feature_names=[f"f{i}" for i in range(32)], hidden_units=[256, 256], dropout=0.1)
CONFIG = TrainConfig(
    max_epochs=6,
    batch_size=8_192,
    patience=10,
    seed=9,
    device="cuda",
    deterministic=True,
    lr_schedule="cosine",
    checkpoint_interval_seconds=0,
)


class Crash(RuntimeError):
    """Stands for the GPU node being preempted."""


def synthetic(n: int = 200_000) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n + n // 5, 32)).astype(np.float32)
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1] * x[:, 2] - 3)))).astype(np.float32)
    return x[:n], y[:n], x[n:], y[n:]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, ...]:
    return synthetic()


@pytest.fixture(scope="module")
def uninterrupted(data):
    return train_model(MODEL, *data, CONFIG)


def test_cuda_path_trains_on_the_gpu_and_returns_a_cpu_model(uninterrupted) -> None:
    assert uninterrupted.device == "cuda"
    assert next(uninterrupted.model.parameters()).device.type == "cpu"
    losses = [h.train_loss for h in uninterrupted.history]
    assert losses[-1] < losses[0]


def test_cuda_run_is_deterministic_for_a_seed(data, uninterrupted) -> None:
    again = train_model(MODEL, *data, CONFIG)
    assert [h.val_loss for h in again.history] == [h.val_loss for h in uninterrupted.history]


def test_cuda_run_resumed_after_a_crash_ends_with_the_same_weights(tmp_path: Path, data, uninterrupted) -> None:
    def crash(r: EpochResult) -> None:
        if r.epoch == 3:
            raise Crash("preempted")

    with pytest.raises(Crash):
        train_model(MODEL, *data, CONFIG, on_epoch=crash, checkpoint_dir=tmp_path)
    assert load_checkpoint(tmp_path)["device_type"] == "cuda"
    resumed = train_model(MODEL, *data, CONFIG, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_epoch == 2
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in uninterrupted.history]
    for name, value in uninterrupted.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


@pytest.mark.parametrize(("bf16", "compiled"), [(True, False), (False, True), (True, True)])
def test_bf16_and_compile_options_train(data, uninterrupted, bf16: bool, compiled: bool) -> None:
    result = train_model(MODEL, *data, replace(CONFIG, bf16=bf16, compile_model=compiled))
    losses = [h.val_loss for h in result.history]
    assert all(np.isfinite(losses))
    # The same optimisation in lower precision or fused kernels: near the fp32 eager run, not bitwise.
    assert min(losses) == pytest.approx(min(h.val_loss for h in uninterrupted.history), rel=0.1)


@pytest.mark.slow
def test_torchrun_entry_point_trains_with_nccl(tmp_path: Path, data) -> None:
    nproc = min(2, torch.cuda.device_count())
    arrays = dict(zip(("x_train", "y_train", "x_val", "y_val"), data, strict=True))
    npz = save_training_data(tmp_path / "data.npz", arrays, MODEL.feature_names)
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"),
        *("-m", "mlplatform.training.ddp", "--data", str(npz), "--output", str(tmp_path / "model")),
        *("--checkpoint-dir", str(tmp_path / "ckpt"), "--config", json.dumps(asdict(replace(CONFIG, max_epochs=2)))),
        *("--hidden-units", "256", "256"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "model" / RESULT_FILE).read_text())
    assert summary["device"] == "cuda" and summary["world_size"] == nproc
    load_model(tmp_path / "model")
