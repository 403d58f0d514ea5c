"""The training loop: plain PyTorch on tensors held on the device (imports only torch, numpy, the model)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mlplatform.errors import MlPlatformError
from mlplatform.training.model import FraudMLP, ModelConfig, build_model

#: The checkpoint a run writes (and overwrites, atomically) in its checkpoint directory.
CHECKPOINT_FILE = "last.pt"
#: Bumped when the checkpoint layout changes; an older checkpoint is refused, not misread.
CHECKPOINT_FORMAT = 1
LR_SCHEDULES = ("constant", "cosine")

#: Defaults of the speed options per device type, (bf16 autocast, torch.compile), chosen from
#: `make bench-train` measurements; see docs/adr/0003-training-compute.md. Neither helped on the
#: 2-core CPU; on CUDA neither is enabled until an H100 measurement shows a gain.
MEASURED_DEFAULTS: dict[str, tuple[bool, bool]] = {"cpu": (False, False), "cuda": (False, False)}


class CheckpointMismatchError(MlPlatformError):
    """A checkpoint exists but belongs to another run (other data, model or hyperparameters)."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters and execution options of one training run.

    Attributes:
        max_epochs: Upper bound on passes over the training set.
        batch_size: Rows per optimisation step (the global batch when distributed).
        learning_rate: AdamW (peak) learning rate.
        weight_decay: AdamW weight decay.
        patience: Epochs without validation-loss improvement before stopping early.
        pos_weight: Weight of the positive (fraud) class in the loss.
        seed: Seed of every random generator involved.
        device: "cuda", "cpu" or "auto" (CUDA when available).
        deterministic: Ask PyTorch for deterministic kernels (slower on GPU).
        lr_schedule: "constant", or "cosine": linear warm-up over the first epoch, then cosine decay to
            zero at `max_epochs`, stepped per batch.
        bf16: Run forward passes under bf16 autocast; None: the measured default for the device.
        compile_model: Run the training step through `torch.compile`; None: the measured default.
        checkpoint_interval_seconds: Least time between two checkpoints (the last epoch is always
            checkpointed); 0 checkpoints every epoch. Only used with a checkpoint directory.
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
    lr_schedule: str = "constant"
    bf16: bool | None = None
    compile_model: bool | None = None
    checkpoint_interval_seconds: float = 60.0

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
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.checkpoint_interval_seconds < 0:
            raise ValueError(f"checkpoint_interval_seconds must be >= 0, got {self.checkpoint_interval_seconds}")


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
    resumed_from_epoch: int = 0
    world_size: int = 1


def resolve_device(name: str) -> torch.device:
    """The device for a `TrainConfig.device` value."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return torch.device(name)


def resolve_speed_options(config: TrainConfig, device: torch.device) -> tuple[bool, bool]:
    """(bf16 autocast, torch.compile) in force: the config's choice, else the measured default."""
    bf16_default, compile_default = MEASURED_DEFAULTS.get(device.type, (False, False))
    bf16 = bf16_default if config.bf16 is None else config.bf16
    compiled = compile_default if config.compile_model is None else config.compile_model
    return bf16, compiled


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and PyTorch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS is deterministic only with a fixed workspace; read when CUDA first initialises cuBLAS.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)


def _lr_factor(schedule: str, steps_per_epoch: int, max_epochs: int) -> Callable[[int], float]:
    if schedule == "constant":
        return lambda step: 1.0
    total, warmup = steps_per_epoch * max_epochs, steps_per_epoch

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return cosine


def _fingerprint(model_config: ModelConfig, config: TrainConfig, speed: tuple[bool, bool], arrays: list) -> str:
    """What a checkpoint must match to be resumed: data, architecture, everything that changes the math."""
    h = hashlib.sha256()
    math_config = {k: v for k, v in asdict(config).items() if k not in ("device", "checkpoint_interval_seconds")}
    math_config["bf16"], math_config["compile_model"] = speed
    arch = [model_config.feature_names, model_config.hidden_units, model_config.dropout]
    h.update(json.dumps([math_config, arch], sort_keys=True).encode())
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # MT19937 key, position, Gaussian cache
    return {
        "python": random.getstate(),
        "numpy": (torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], directory: Path) -> Path:
    """Write `state` to `directory/last.pt` atomically: a crash leaves the previous checkpoint intact."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    tmp = directory / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself durable
    finally:
        os.close(fd)
    return path


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The checkpoint in `directory`, or None. Loaded with `weights_only=True`: no arbitrary unpickling."""
    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(
            f"{path} has checkpoint format {state.get('format')}, this code writes {CHECKPOINT_FORMAT}; "
            "delete the directory to start the run afresh"
        )
    return state


def train_model(
    model_config: ModelConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: TrainConfig,
    on_epoch: Callable[[EpochResult], None] | None = None,
    checkpoint_dir: Path | None = None,
) -> TrainResult:
    """Train the fraud MLP with early stopping on the validation loss; resume from a checkpoint if one exists.

    The data is moved to the device once (through pinned memory on CUDA); batches are index slices of
    device tensors. Inside an initialised `torch.distributed` process group (torchrun) the model is
    wrapped in DistributedDataParallel: every rank draws the same permutation, trains on its share of
    each global batch of `batch_size` rows and the gradients are averaged, so the update equals the
    single-process one up to float rounding and dropout masks.

    With `checkpoint_dir`, model, optimizer, scheduler, RNG states, epoch, early-stopping state and
    history are written there (rank 0, atomically) at most every `checkpoint_interval_seconds` and after
    the last epoch. A later call with the same directory, data and configuration continues from that
    checkpoint and ends with the same weights as an uninterrupted run. `on_epoch` is called only for
    the epochs run in this call.

    Args:
        model_config: Architecture and feature names.
        x_train: Training inputs, float32, shape (n, n_features).
        y_train: Training labels (0/1).
        x_val: Validation inputs.
        y_val: Validation labels.
        config: Hyperparameters.
        on_epoch: Called after every epoch (logging), before that epoch is checkpointed.
        checkpoint_dir: Where checkpoints are written and resumed from; None disables checkpointing.

    Returns:
        The model at its best validation loss, in eval mode, on the CPU.

    Raises:
        ValueError: On inputs of the wrong shape.
        CheckpointMismatchError: When `checkpoint_dir` holds a checkpoint of other data or configuration.
    """
    if x_train.ndim != 2 or x_train.shape[1] != len(model_config.feature_names):
        raise ValueError(f"x_train must have shape (n, {len(model_config.feature_names)}), got {x_train.shape}")
    if len(x_train) != len(y_train) or len(x_val) != len(y_val):
        raise ValueError("inputs and labels differ in length")
    if len(x_train) == 0 or len(x_val) == 0:
        raise ValueError("training and validation sets must not be empty")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    seed_everything(config.seed, config.deterministic)
    device = resolve_device(config.device)
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    bf16, compiled = resolve_speed_options(config, device)
    pin = device.type == "cuda"

    arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in (x_train, y_train, x_val, y_val)]

    def to_dev(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        return (t.pin_memory() if pin else t).to(device, non_blocking=pin)

    xt, yt, xv, yv = (to_dev(a) for a in arrays)
    model = build_model(model_config)
    model.fit_normalisation(torch.from_numpy(arrays[0]))
    model.to(device)
    if rank > 0:  # other dropout masks than rank 0, whose stream equals the single-process one
        torch.manual_seed(config.seed + 1_000_003 * rank)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    step_net = torch.compile(net) if compiled else net

    n = xt.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        fused=True if device.type == "cuda" else None,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(config.lr_schedule, steps_per_epoch, config.max_epochs))
    pos_weight = torch.tensor(config.pos_weight, device=device)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    sum_loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="sum")
    gen = torch.Generator(device=device).manual_seed(config.seed)

    best_loss, best_state, best_epoch, stale = float("inf"), None, 0, 0
    history: list[EpochResult] = []
    start_epoch, finished = 1, False
    fingerprint = _fingerprint(model_config, config, (bf16, compiled), arrays) if checkpoint_dir else ""
    state = load_checkpoint(checkpoint_dir) if checkpoint_dir else None
    if state is not None:
        if state["fingerprint"] != fingerprint:
            raise CheckpointMismatchError(
                f"{checkpoint_dir}/{CHECKPOINT_FILE} belongs to another run (other data, model or hyperparameters); "
                "use a new checkpoint directory or delete this one"
            )
        if state["device_type"] != device.type:
            raise CheckpointMismatchError(
                f"{checkpoint_dir}/{CHECKPOINT_FILE} was written on {state['device_type']}, this run is on "
                f"{device.type}: the random streams cannot continue; resume on {state['device_type']} or delete it"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        best_loss, best_epoch, stale = state["best_loss"], state["best_epoch"], state["stale"]
        best_state = {k: v.to(device) for k, v in state["best_state"].items()}
        history = [EpochResult(**h) for h in state["history"]]
        start_epoch, finished = state["epoch"] + 1, state["finished"]
        if len(state["rng"]) == world:
            _set_rng_state(state["rng"][rank])
        else:
            warnings.warn(
                f"checkpoint written by {len(state['rng'])} processes, resumed by {world}: "
                "dropout masks after the resume differ from an uninterrupted run",
                stacklevel=2,
            )
            torch.manual_seed(config.seed + 1_000_003 * rank + state["epoch"])
    resumed_from = start_epoch - 1

    last_save = time.monotonic()
    epoch = start_epoch
    while not finished and epoch <= config.max_epochs:
        model.train()
        perm = torch.randperm(n, device=device, generator=gen)
        total = torch.zeros((), device=device)
        for start in range(0, n, config.batch_size):
            idx = perm[start : start + config.batch_size]
            if world > 1:
                idx = idx.tensor_split(world)[rank]
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = step_net(xt[idx])
            if world > 1:
                # Per-rank sum over the global batch size, times world: DDP's gradient average is then
                # exactly the gradient of the global batch mean, also for a short last batch.
                loss_sum = sum_loss_fn(logits.float(), yt[idx])
                (loss_sum * (world / min(config.batch_size, n - start))).backward()
                total += loss_sum.detach()
            else:
                loss = loss_fn(logits.float(), yt[idx])
                loss.backward()
                total += loss.detach() * idx.numel()
            opt.step()
            sched.step()
        model.eval()
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            val_loss_t = loss_fn(model(xv).float(), yv)
        save_due = checkpoint_dir is not None and time.monotonic() - last_save >= config.checkpoint_interval_seconds
        if world > 1:  # rank 0's view decides, so that every rank takes the same branch
            dist.all_reduce(total)
            flags = torch.stack([val_loss_t.float(), torch.tensor(float(save_due), device=device)])
            dist.broadcast(flags, src=0)
            val_loss_t, save_due = flags[0], bool(flags[1])
        result = EpochResult(epoch, float(total) / n, float(val_loss_t))
        history.append(result)
        if on_epoch is not None:
            on_epoch(result)
        if result.val_loss < best_loss - 1e-5:
            best_loss, best_epoch, stale = result.val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        finished = stale >= config.patience or epoch == config.max_epochs
        if checkpoint_dir is not None and (save_due or finished):
            rng: list[Any] = [_rng_state()]
            if world > 1:
                rng = [None] * world
                dist.all_gather_object(rng, _rng_state())
            if rank == 0:
                save_checkpoint(
                    {
                        "format": CHECKPOINT_FORMAT,
                        "fingerprint": fingerprint,
                        "device_type": device.type,
                        "epoch": epoch,
                        "finished": finished,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "generator": gen.get_state(),
                        "rng": rng,
                        "best_loss": best_loss,
                        "best_epoch": best_epoch,
                        "stale": stale,
                        "best_state": best_state,
                        "history": [asdict(h) for h in history],
                    },
                    checkpoint_dir,
                )
            last_save = time.monotonic()
        epoch += 1
    assert best_state is not None  # at least one epoch ran and set it
    model.load_state_dict(best_state)
    model.to("cpu").eval()
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        device=device.type,
        resumed_from_epoch=resumed_from,
        world_size=world,
    )
