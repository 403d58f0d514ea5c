"""Derive the CPU-only lock of the serving image from requirements.lock (standard library only).

torch on PyPI for Linux x86_64 is the CUDA build: it pulls ~3 GB of CUDA wheels (nvidia-*, cuda-*,
triton). The serving image runs on CPU, so this keeps every pin of requirements.lock except the
CUDA packages (nvidia-*, cuda-*, triton) that nothing but torch's CUDA build needs (checked against the
lock's own "# via" annotations, so a CUDA package another dependency needs stays, not from a
hand-kept list of versions), and pins torch to the same version's "+cpu" build from the PyTorch CPU index.

    python scripts/cpu_lock.py requirements.lock > requirements-cpu.lock
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CUDA_FAMILY = re.compile(r"^(nvidia-|cuda-|triton$)")
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>\S+)")


def parse(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """`name -> version` and `name -> the packages that require it` from a `uv pip compile` lock."""
    pins: dict[str, str] = {}
    via: dict[str, set[str]] = {}
    current = None
    for line in text.splitlines():
        if match := PIN.match(line):
            current = match["name"].lower()
            pins[current] = match["version"]
            via[current] = set()
        elif current and line.strip().startswith("#"):
            entry = line.strip().lstrip("#").strip()
            entry = entry.removeprefix("via").strip()
            if entry:
                via[current].add(entry.split(" ")[0].lower())
    return pins, via


def cuda_only(pins: dict[str, str], via: dict[str, set[str]]) -> set[str]:
    """CUDA packages required (directly or transitively) by torch alone: its CUDA runtime."""
    dropped: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, parents in via.items():
            cuda = CUDA_FAMILY.match(name) is not None
            if cuda and name not in dropped and parents and parents <= dropped | {"torch"}:
                dropped.add(name)
                changed = True
    return dropped


def cpu_lock(text: str) -> str:
    """The lock text with torch's CUDA-only dependencies removed and torch pinned to its +cpu build."""
    pins, via = parse(text)
    if "torch" not in pins:
        raise SystemExit("cpu_lock: requirements.lock pins no torch")
    dropped = cuda_only(pins, via)
    out = []
    skipping = False
    for line in text.splitlines():
        if match := PIN.match(line):
            name = match["name"].lower()
            skipping = name in dropped
            if name == "torch":
                line = f"torch=={pins['torch'].split('+')[0]}+cpu"
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(cpu_lock(Path(sys.argv[1] if len(sys.argv) > 1 else "requirements.lock").read_text()))
