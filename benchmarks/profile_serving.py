"""Profile the full local serving path under load: py-spy samples the transformer and the predictor while the
serving benchmark's closed-loop load runs, and writes a flame graph (SVG) per process plus a table of where the
CPU goes (own time by library). `make profile-serving`; the figures go into docs/adr/0016-serving-layout.md.

Needs `make services` (Redis, PostgreSQL). py-spy reads the processes' memory (ptrace): run as their owner.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from bench_serving import prepared_stack, run_load  # beside this script
from machine import describe

from mlplatform.local.serving import start_local

ROOT = Path(__file__).resolve().parents[1]
#: py-spy names a frame `function (path:line)`, the path relative to sys.path: its first folder is the library.
ALIASES = {"h11": "uvicorn", "httptools": "uvicorn", "pydantic_core": "pydantic", "serving": "serving (ours)"}


def library(frame: str) -> str:
    """The library a collapsed-stack frame belongs to (its file's top folder; the standard library's modules by
    name, e.g. asyncio)."""
    path = frame.rpartition(" (")[2].split(":")[0]
    top = path.split("/")[0].removesuffix(".py") if path else "?"
    if "/" not in path and top in ("selectors", "threading", "socket", "json"):
        return f"stdlib {top}"
    return ALIASES.get(top, top)


def summarize(collapsed: Path, top: int = 12) -> dict[str, Any]:
    """Own (leaf) samples by library and the hottest leaf functions, from py-spy's raw (collapsed) output."""
    by_library: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        leaf = frames[-1]
        total += n
        by_library[library(leaf)] += n
        by_function[leaf] += n
        for name in {library(f) for f in frames}:
            inclusive[name] += n
    share = (lambda c: round(100 * c / total, 1)) if total else (lambda c: 0.0)
    return {
        "samples": total,
        "own_percent_by_library": {k: share(v) for k, v in by_library.most_common()},
        "inclusive_percent_by_library": {k: share(v) for k, v in inclusive.most_common()},
        "hottest_functions_percent": {k: share(v) for k, v in by_function.most_common(top)},
    }


def record(pid: int, seconds: float, out: Path, fmt: str) -> subprocess.Popen[bytes]:
    py_spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [
            str(py_spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "250",
            "--nonblocking",
            "--format",
            fmt,
            "--output",
            str(out),
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _load_into(result: dict[str, Any], url: str, bodies: list[bytes], seconds: float, pids: list[int]) -> None:
    result.update(run_load("closed", url, bodies, 8, seconds, pids))


def profile(url: str, bodies: list[bytes], pids: dict[str, int], out: Path, seconds: float) -> dict[str, Any]:
    """Closed-loop load (8 workers) while py-spy records each process: raw stacks, then a flame graph."""
    run_load("closed", url, bodies, 8, 3, list(pids.values()))  # warm-up
    result: dict[str, Any] = {}
    for fmt, suffix in (("raw", "txt"), ("flamegraph", "svg")):
        recorders = {name: record(pid, seconds, out / f"{name}.{suffix}", fmt) for name, pid in pids.items()}
        load: dict[str, Any] = {}
        thread = threading.Thread(target=_load_into, args=(load, url, bodies, seconds, list(pids.values())))
        thread.start()
        for name, proc in recorders.items():
            _, err = proc.communicate(timeout=seconds + 60)
            if proc.returncode != 0:
                raise RuntimeError(f"py-spy on the {name} failed: {err.decode()[-500:]}")
        thread.join()
        result[f"load_during_{fmt}"] = load
    for name in pids:
        result[name] = summarize(out / f"{name}.txt")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "profile")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        work, model_dir, bodies, env = stack.enter_context(prepared_stack())
        service = stack.enter_context(start_local(model_dir, env=env, log_dir=work / "logs"))
        pids = {name: p.pid for name, p in service.processes.items()}
        profiled = profile(service.predict_url, bodies, pids, args.output, args.seconds)
        results = {"machine": describe(), **profiled}
    (args.output / "profile.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
