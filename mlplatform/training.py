"""The training loop: plain PyTorch on tensors held on the device (imports only torch, numpy, the model)."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mlplatform.model import FraudMLP, ModelConfig, build_model


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run.

    Attributes:
        max_epochs: Upper bound on passes over the training set.
        batch_size: Rows per optimisation step.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        patience: Epochs without validation-loss improvement before stopping early.
        pos_weight: Weight of the positive (fraud) class in the loss.
        seed: Seed of every random generator involved.
        device: "cuda", "cpu" or "auto" (CUDA when available).
        deterministic: Ask PyTorch for deterministic kernels (slower on GPU).
    """

    max_epochs: int = 30
    batch_size: int = 1024
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 4
    pos_weight: float = 3.0
    seed: int = 42
    device: str = "auto"
    deterministic: bool = True

    def __post_init__(self) -> None:
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be at least 1, got {self.max_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


@dataclass
class EpochResult:
    """Losses after one epoch."""

    epoch: int
    train_loss: float
    val_loss: float


@dataclass
class TrainResult:
    """What training produced: the best model (by validation loss) and its history."""

    model: FraudMLP
    history: list[EpochResult] = field(default_factory=list)
    best_epoch: int = 0
    device: str = "cpu"


def resolve_device(name: str) -> torch.device:
    """The device for a `TrainConfig.device` value."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and PyTorch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def train_model(
    model_config: ModelConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: TrainConfig,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TrainResult:
    """Train the fraud MLP with early stopping on the validation loss.

    The data is moved to the device once; batches are index slices of device tensors.

    Args:
        model_config: Architecture and feature names.
        x_train: Training inputs, float32, shape (n, n_features).
        y_train: Training labels (0/1).
        x_val: Validation inputs.
        y_val: Validation labels.
        config: Hyperparameters.
        on_epoch: Called after every epoch (logging).

    Returns:
        The model at its best validation loss, in eval mode, on the CPU.
    """
    if x_train.ndim != 2 or x_train.shape[1] != len(model_config.feature_names):
        raise ValueError(f"x_train must have shape (n, {len(model_config.feature_names)}), got {x_train.shape}")
    if len(x_train) != len(y_train) or len(x_val) != len(y_val):
        raise ValueError("inputs and labels differ in length")
    if len(x_train) == 0 or len(x_val) == 0:
        raise ValueError("training and validation sets must not be empty")
    seed_everything(config.seed, config.deterministic)
    device = resolve_device(config.device)
    pin = device.type == "cuda"

    def to_dev(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        return (t.pin_memory() if pin else t).to(device, non_blocking=pin)

    xt, yt, xv, yv = to_dev(x_train), to_dev(y_train), to_dev(x_val), to_dev(y_val)
    model = build_model(model_config)
    model.fit_normalisation(torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)))
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(config.pos_weight, device=device))
    gen = torch.Generator(device=device).manual_seed(config.seed)

    best_loss, best_state, best_epoch, stale = float("inf"), None, 0, 0
    history: list[EpochResult] = []
    n = xt.shape[0]
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        perm = torch.randperm(n, device=device, generator=gen)
        total = torch.zeros((), device=device)
        for start in range(0, n, config.batch_size):
            idx = perm[start : start + config.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.detach() * idx.numel()
        model.eval()
        with torch.inference_mode():
            val_loss = float(loss_fn(model(xv), yv))
        result = EpochResult(epoch, float(total) / n, val_loss)
        history.append(result)
        if on_epoch is not None:
            on_epoch(result)
        if val_loss < best_loss - 1e-5:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                break
    assert best_state is not None  # at least one epoch ran and set it
    model.load_state_dict(best_state)
    model.to("cpu").eval()
    return TrainResult(model=model, history=history, best_epoch=best_epoch, device=device.type)
