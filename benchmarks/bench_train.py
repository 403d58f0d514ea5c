"""Samples/s of the training loop (mlplatform.training.loop.train_model) against a bare PyTorch loop; prints JSON.

Both loops train the same model (FraudMLP, 32 -> 256 -> 256 -> 1, AdamW, fp32 unless a variant says
otherwise) at the same batch size on the same synthetic data, in the same process, interleaved
`--repeats` times. Every epoch after the first (warm-up: allocator, kernels, torch.compile) is timed,
the device synchronised at both ends; the component's epochs include what the real loop does besides
the steps: the validation pass, loss bookkeeping, LR scheduler and its checkpoints. The figure of a
loop is its fastest epoch over all repeats (as `timeit` takes the minimum: on a shared machine other
processes only ever slow a loop down); the median epoch is reported beside it. `--variants` also
measures the component with bf16 autocast and with torch.compile, the evidence for
`mlplatform.training.loop.MEASURED_DEFAULTS`.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

# Runnable from a bare checkout on a GPU machine: needs torch, numpy and safetensors, not the pipeline stack.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe  # noqa: E402  (benchmarks/machine.py, beside this script)

from mlplatform.training.loop import TrainConfig, resolve_device, resolve_speed_options, train_model
from mlplatform.training.model import ModelConfig, build_model

N_FEATURES = 32
MODEL = ModelConfig(feature_names=[f"f{i}" for i in range(N_FEATURES)], hidden_units=[256, 256])
#: Per device type: rows, batch sizes, epochs (the first is warm-up). Rows are a multiple of every
#: batch size, so that no step has a short batch (and torch.compile sees a single shape).
PRESETS = {
    "cpu": {"rows": 131_072, "batch_sizes": [1_024, 8_192, 65_536], "epochs": 4},
    "cuda": {"rows": 4_194_304, "batch_sizes": [8_192, 65_536, 262_144], "epochs": 6},
}


def synthetic(rows: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(size=(rows + rows // 10, N_FEATURES)).astype(np.float32)
    y = (rng.random(len(x)) < 0.02).astype(np.float32)
    return x[:rows], y[:rows], x[rows:], y[rows:]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float:
    """Peak device memory since the last reset on CUDA; the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def component_loop(data, batch: int, epochs: int, device: torch.device, bf16: bool, compiled: bool) -> list[float]:
    """Samples/s of each epoch of train_model after the first, checkpointing as the train task does."""
    marks: list[float] = []
    config = TrainConfig(
        max_epochs=epochs,
        batch_size=batch,
        patience=epochs + 1,
        device=device.type,
        bf16=bf16,
        compile_model=compiled,
    )
    with tempfile.TemporaryDirectory() as ckpt:
        # on_epoch runs after the epoch's validation loss is read back: the device is synchronised.

        def mark(_: object) -> None:
            marks.append(time.perf_counter())

        train_model(MODEL, *data, config, on_epoch=mark, checkpoint_dir=Path(ckpt))
    return [len(data[0]) / (b - a) for a, b in zip(marks, marks[1:], strict=False)]


def bare_loop(data, batch: int, epochs: int, device: torch.device) -> list[float]:
    """Samples/s of each epoch after the first of the plainest PyTorch loop: same data, model, optimizer."""
    torch.use_deterministic_algorithms(False)  # train_model may have switched it on in this process
    torch.manual_seed(0)
    x, y = (torch.from_numpy(a).to(device) for a in data[:2])
    model = build_model(MODEL).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0, device=device))
    n, marks = len(x), []
    for _ in range(epochs):
        perm = torch.randperm(n, device=device)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        sync(device)
        marks.append(time.perf_counter())
    return [n / (b - a) for a, b in zip(marks, marks[1:], strict=False)]


def measure(fn, device: torch.device) -> tuple[list[float], float]:
    reset_memory(device)
    value = fn()
    return value, peak_memory_mib(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--rows", type=int, default=None, help="training rows (default: per device)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per measurement, the first is warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", action="store_true", help="also measure bf16 autocast and torch.compile")
    parser.add_argument("--variant-repeats", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/train-<device>.json")
    args = parser.parse_args()

    device = resolve_device(args.device)
    preset = PRESETS[device.type]
    rows, epochs = args.rows or preset["rows"], args.epochs or preset["epochs"]
    batch_sizes = args.batch_sizes or preset["batch_sizes"]
    data = synthetic(rows)
    bf16, compiled = resolve_speed_options(TrainConfig(), device)

    runs = []
    for batch in batch_sizes:
        comp, bare, comp_mem, bare_mem = [], [], [], []
        for _ in range(args.repeats):
            values, mem = measure(lambda b=batch: component_loop(data, b, epochs, device, bf16, compiled), device)
            comp += values
            comp_mem.append(mem)
            values, mem = measure(lambda b=batch: bare_loop(data, b, epochs, device), device)
            bare += values
            bare_mem.append(mem)
        runs.append(
            {
                "batch": batch,
                "component_samples_per_s": round(max(comp)),
                "bare_samples_per_s": round(max(bare)),
                "ratio": round(max(comp) / max(bare), 3),
                "component_median_samples_per_s": round(statistics.median(comp)),
                "bare_median_samples_per_s": round(statistics.median(bare)),
                "component_peak_memory_mib": max(comp_mem),
                "bare_peak_memory_mib": max(bare_mem),
            }
        )
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)

    variants = []
    if args.variants:
        for batch in batch_sizes:
            base = next(r["component_samples_per_s"] for r in runs if r["batch"] == batch)
            for v_bf16, v_compiled in [(True, False), (False, True), (True, True)]:
                values = []
                for _ in range(args.variant_repeats):
                    values += component_loop(data, batch, epochs, device, v_bf16, v_compiled)
                variants.append(
                    {
                        "batch": batch,
                        "bf16": v_bf16,
                        "compile": v_compiled,
                        "component_samples_per_s": round(max(values)),
                        "ratio_to_default": round(max(values) / base, 3),
                    }
                )
                print(json.dumps(variants[-1]), file=sys.stderr, flush=True)

    result = {
        "benchmark": "train",
        "machine": describe(device),
        "setup": {
            "model": f"FraudMLP {N_FEATURES} -> 256 -> 256 -> 1 (dropout 0.1), AdamW, weighted BCE",
            "rows": rows,
            "validation_rows": len(data[2]),
            "epochs_timed": epochs - 1,
            "figure": "fastest timed epoch over all repeats; medians beside",
            "repeats": args.repeats,
            "variant_repeats": args.variant_repeats if args.variants else 0,
            "component_defaults": {"bf16": bf16, "compile": compiled, "deterministic": TrainConfig().deterministic},
            "memory": "peak CUDA memory allocated" if device.type == "cuda" else "process peak RSS (cumulative)",
        },
        "runs": runs,
        "variants": variants,
        "min_ratio": min(r["ratio"] for r in runs),
    }
    text = json.dumps(result, indent=2)
    print(text)
    output = args.output or Path(__file__).parent / "results" / f"train-{device.type}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text + "\n")


if __name__ == "__main__":
    main()
