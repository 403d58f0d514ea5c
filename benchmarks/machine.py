"""What a benchmark's figures were measured on (stdlib and torch only: it also runs on a bare GPU machine)."""

from __future__ import annotations

import json
import os
import platform
import time
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


def wake_latency(seconds: float = 5.0) -> dict:
    """How late this machine wakes a sleeping thread: 1 ms sleeps for `seconds` on an otherwise idle machine.

    A shared virtual machine wakes a thread late now and then by milliseconds (the benchmark machines: 2-7 ms,
    a few times every 10 s, with or without the guest's halt polling); every server process on a request's path
    sleeps between requests, so such stalls show in a latency tail that no server code removes. Recorded beside
    latency figures so they can be read against it.
    """
    overshoot = []
    end = time.perf_counter() + seconds
    while (t := time.perf_counter()) < end:
        time.sleep(0.001)  # clock_nanosleep (Python >= 3.11)
        overshoot.append((time.perf_counter() - t - 0.001) * 1000)
    overshoot.sort()
    driver = Path("/sys/devices/system/cpu/cpuidle/current_driver")
    return {
        "sleeps": len(overshoot),
        "sleep_1ms_late_p50_ms": round(overshoot[len(overshoot) // 2], 3),
        "sleep_1ms_late_p99_ms": round(overshoot[len(overshoot) * 99 // 100], 3),
        "sleep_1ms_late_max_ms": round(overshoot[-1], 2),
        "late_over_2ms_per_s": round(sum(o > 2 for o in overshoot) / seconds, 2),
        "cpuidle_driver": driver.read_text().strip() if driver.is_file() else "unknown",
    }


def report(results: dict, output: Path | None) -> None:
    """Print a benchmark's JSON results and write them to `output` (its folder created), when given."""
    text = json.dumps(results, indent=2)
    print(text)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
