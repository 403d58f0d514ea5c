"""Data-parallel training entry point for torchrun: `torchrun --nproc-per-node N -m mlplatform.training.ddp ...`.

Imports only torch, numpy and the project's model and training code, so it runs in a bare PyTorch
image. torchrun (or a Kubeflow Trainer TrainJob, whose torch runtime sets torchrun's `PET_*`
variables) starts one process per GPU; each joins the process group (NCCL on GPUs, Gloo on CPUs),
`train_model` wraps the model in DistributedDataParallel, and rank 0 writes the model and the
training history.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mlplatform.training.loop import TrainConfig, train_model
from mlplatform.training.model import ModelConfig, save_model

DATA_KEYS = ("x_train", "y_train", "x_val", "y_val")
#: Written by rank 0 beside the model: history, best epoch, device, world size.
RESULT_FILE = "training_result.json"


def save_training_data(path: Path, arrays: dict[str, np.ndarray], feature_names: list[str]) -> Path:
    """Write the arrays this entry point reads (`DATA_KEYS`) and the feature names to one .npz (no pickle)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    contents: dict[str, Any] = {"feature_names": np.array(feature_names), **{k: arrays[k] for k in DATA_KEYS}}
    np.savez(path, **contents)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mlplatform.training.ddp", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="the .npz written by save_training_data")
    parser.add_argument("--output", type=Path, required=True, help="model directory rank 0 writes")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="checkpoints (shared by all nodes)")
    parser.add_argument("--config", default="{}", help="TrainConfig fields as JSON, e.g. '{\"max_epochs\": 10}'")
    parser.add_argument("--hidden-units", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--dropout", type=float, default=0.1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = json.loads(args.config)
    unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise SystemExit(f"--config: unknown TrainConfig field(s) {sorted(unknown)}")
    config = TrainConfig(**overrides)
    use_cuda = config.device != "cpu" and torch.cuda.is_available()
    if "RANK" not in os.environ:
        raise SystemExit("start this module with torchrun (RANK, WORLD_SIZE and MASTER_ADDR are not set)")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        with np.load(args.data, allow_pickle=False) as data:
            x_train, y_train, x_val, y_val = (data[k] for k in DATA_KEYS)
            feature_names = [str(n) for n in data["feature_names"]]
        model_config = ModelConfig(feature_names=feature_names, hidden_units=args.hidden_units, dropout=args.dropout)
        result = train_model(model_config, x_train, y_train, x_val, y_val, config, checkpoint_dir=args.checkpoint_dir)
        if dist.get_rank() == 0:
            save_model(result.model, model_config, args.output)
            summary = {
                "history": [asdict(h) for h in result.history],
                "best_epoch": result.best_epoch,
                "device": result.device,
                "world_size": result.world_size,
                "resumed_from_epoch": result.resumed_from_epoch,
            }
            (args.output / RESULT_FILE).write_text(json.dumps(summary, indent=2))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
