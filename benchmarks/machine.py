"""What a benchmark's figures were measured on (stdlib and torch only: it also runs on a bare GPU machine)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def describe(device: torch.device | None = None) -> dict:
    """CPU model, cores, memory, load, Python, torch and, for a CUDA device, the GPU."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    described = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "os": platform.platform(),
        "device": "cpu",
        # what else ran: these machines are shared, and a loaded one explains slow figures
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        described |= {"device": props.name, "device_memory_gib": round(props.total_memory / 2**30, 1)}
        described["cuda_version"] = torch.version.cuda
    return described


def report(results: dict, output: Path | None) -> None:
    """Print a benchmark's JSON results and write them to `output` (its folder created), when given."""
    text = json.dumps(results, indent=2)
    print(text)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
