"""DDP under torchrun: two Gloo processes on the CPU train the model a single process trains, within float rounding."""

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

from mlplatform.training.ddp import RESULT_FILE, main, save_training_data
from mlplatform.training.loop import TrainConfig, load_checkpoint, train_model
from mlplatform.training.model import ModelConfig, load_model

REPO = Path(__file__).resolve().parents[2]
# Dropout off: with it each rank draws its own masks, a legitimate difference from one process. Without
# it, DDP's averaged gradient of the two half-batches is mathematically the full-batch gradient. 3,001
# rows and batch 500: the last batch (1 row) is smaller than the world size, so one rank gets no rows.
MODEL = ModelConfig(feature_names=[f"f{i}" for i in range(6)], hidden_units=[32, 16], dropout=0.0)
CONFIG = TrainConfig(max_epochs=4, batch_size=500, patience=10, seed=11, device="cpu", checkpoint_interval_seconds=0)
# The only legitimate difference is float32 summation order (two half-batch matmuls, then Gloo's
# all-reduce instead of one matmul): measured after 28 steps, 3e-8 on weights (about one ulp) and 8e-8
# relative on losses. The tolerances allow ~30x that, yet catch real mistakes, measured: averaging
# per-rank means on the uneven last batch moves weights by 3e-2; dropping the world-size factor (half
# the gradient, which AdamW nearly normalises away) still moves them by 6e-5.
WEIGHT_ATOL, LOSS_RTOL = 1e-6, 1e-6


def synthetic(n: int = 3_001) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(n + 600, 6)).astype(np.float32)
    y = (rng.random(n + 600) < 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1] - 1.5)))).astype(np.float32)
    return x[:n], y[:n], x[n:], y[n:]


def torchrun(tmp_path: Path, nproc: int, config: TrainConfig) -> Path:
    data = synthetic()
    arrays = dict(zip(("x_train", "y_train", "x_val", "y_val"), data, strict=True))
    npz = save_training_data(tmp_path / "data.npz", arrays, MODEL.feature_names)
    out = tmp_path / f"model-{nproc}"
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"),
        *("-m", "mlplatform.training.ddp", "--data", str(npz), "--output", str(out)),
        *("--checkpoint-dir", str(tmp_path / "ckpt"), "--config", json.dumps(asdict(config))),
        *("--hidden-units", *map(str, MODEL.hidden_units), "--dropout", str(MODEL.dropout)),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_within_float_rounding(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    try:
        single = train_model(MODEL, *synthetic(), CONFIG)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    out = torchrun(tmp_path, 2, CONFIG)

    summary = json.loads((out / RESULT_FILE).read_text())
    assert summary["world_size"] == 2
    assert [h["epoch"] for h in summary["history"]] == [h.epoch for h in single.history]
    np.testing.assert_allclose(
        [h["val_loss"] for h in summary["history"]], [h.val_loss for h in single.history], rtol=LOSS_RTOL
    )
    np.testing.assert_allclose(
        [h["train_loss"] for h in summary["history"]], [h.train_loss for h in single.history], rtol=LOSS_RTOL
    )
    ddp_model, _ = load_model(out)
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp_model.state_dict()[name], value, atol=WEIGHT_ATOL, rtol=LOSS_RTOL)
    # Rank 0 checkpointed the RNG streams of both ranks.
    assert len(load_checkpoint(tmp_path / "ckpt")["rng"]) == 2


def test_entry_point_refuses_to_start_without_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit, match="torchrun"):
        main(["--data", str(tmp_path / "d.npz"), "--output", str(tmp_path / "m")])
    with pytest.raises(SystemExit, match="unknown TrainConfig field"):
        main(["--data", "d", "--output", "m", "--config", json.dumps({"max_epoch": 3})])


def test_config_survives_the_command_line() -> None:
    config = replace(CONFIG, bf16=True, lr_schedule="cosine")
    assert TrainConfig(**json.loads(json.dumps(asdict(config)))) == config
