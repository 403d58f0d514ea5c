"""Serving benchmark: the full local path (KServe transformer + predictor, Feast online store in the real
Redis) against a one-process FastAPI baseline doing the same lookup and model call, in the same run.

Both are up at once and measured in turn, so that both see the same machine: open-loop load at fixed rates
(latency counted from each request's scheduled send time, so a slow server cannot hide queueing), several
windows per rate alternating between the two and pooled per target (each window's p99 is kept too: on these
shared cores it varies from window to window), then closed-loop load (workers send back to back) for the
maximum throughput. The load generator (benchmarks/loadgen, Go: `make loadgen`) runs in its own process on
the same machine. Needs `make services` (Redis, PostgreSQL). Writes JSON with the machine described; no
assertions.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import psutil
from machine import describe, wake_latency  # benchmarks/machine.py, beside this script

from components.features.step import run_features
from components.ingest.step import run_ingest
from components.train.step import run_train
from components.training_set.step import run_training_set
from mlplatform.local.serving import free_port, start_local
from mlplatform.settings import PlatformSettings
from mlplatform.training.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]

REDIS = os.environ.get("MLPLATFORM_TEST_REDIS", "127.0.0.1:16379")
POSTGRES = os.environ.get("MLPLATFORM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:15432/postgres")
REDIS_DB = 13
LOAD_GENERATOR = (
    "benchmarks/loadgen (Go, net/http, keep-alive, at most 256 connections), its own process on the same machine;"
    " open loop paced by nanosleep (latency from each request's scheduled time), then closed loop"
)


# ---------------------------------------------------------------- load generator (own process)
LOADGEN = Path(os.environ.get("MLPLATFORM_TOOLS_DIR", ROOT / ".tools")) / "bin" / "loadgen"


def loadgen_job(
    kind: str,
    url: str,
    bodies: list[bytes],
    x: float,
    seconds: float,
    headers: dict[str, str] | None = None,
    warmup: float = 1.0,
) -> dict[str, Any]:
    """Run benchmarks/loadgen (Go, built by `make loadgen`) once: open loop at `x` requests per second or closed loop
    with `x` workers; returns its raw result (latencies_ms, errors, sent, total, wall, statuses,
    shed_with_retry_after)."""
    if not LOADGEN.exists():
        raise FileNotFoundError(f"{LOADGEN} is missing: run `make loadgen` (scripts/tools.sh loadgen builds it)")
    job = {
        "url": url,
        "bodies": [base64.b64encode(b).decode() for b in bodies],
        "headers": headers or {},
        "mode": kind,
        "rate": x if kind == "open" else 0,
        "concurrency": int(x) if kind == "closed" else 0,
        "seconds": seconds,
        "warmup_seconds": warmup if kind == "open" else 0,
        "timeout_seconds": 5,
    }
    done = subprocess.run([str(LOADGEN)], input=json.dumps(job).encode(), capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()}")
    return json.loads(done.stdout)


def load_window(
    kind: str,
    url: str,
    bodies: list[bytes],
    x: float,
    seconds: float,
    pids: list[int],
    headers: dict[str, str] | None = None,
    warmup: float = 1.0,
) -> dict[str, Any]:
    """One load phase: the load generator's raw result plus `server_cpu_seconds`, the CPU the processes `pids`
    used meanwhile."""
    procs = [psutil.Process(p) for p in pids]
    cpu0 = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    result = loadgen_job(kind, url, bodies, x, seconds, headers, warmup)
    result["server_cpu_seconds"] = sum(p.cpu_times().user + p.cpu_times().system for p in procs) - cpu0
    result["kind"] = kind
    return result


def summarize(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency percentiles, errors, RPS and server CPU over the pooled requests of one or more `load_window`s of the
    same load (several windows: also each window's p99, `p99_ms_per_window`)."""
    lat = np.concatenate([np.asarray(w["latencies_ms"], dtype=float) for w in windows])
    pct = (lambda q: round(float(np.percentile(lat, q)), 2)) if len(lat) else (lambda q: None)
    total = sum(w["total"] for w in windows)
    summary = {
        "rps": round(len(lat) / sum(w["wall"] for w in windows), 1),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "errors": sum(w["errors"] for w in windows),
        "requests": sum(w["sent"] for w in windows),
        "server_cpu_ms_per_request": round(1000 * sum(w["server_cpu_seconds"] for w in windows) / max(total, 1), 2),
    }
    if windows[0]["kind"] == "open":
        statuses: dict[str, int] = {}
        for w in windows:
            for k, v in w["statuses"].items():
                statuses[k] = statuses.get(k, 0) + v
        summary["statuses"] = statuses
        summary["shed_with_retry_after"] = sum(w["shed_with_retry_after"] for w in windows)
    if len(windows) > 1:
        summary["p99_ms_per_window"] = [
            round(float(np.percentile(w["latencies_ms"], 99)), 2) if w["latencies_ms"] else None for w in windows
        ]
    return summary


def run_load(
    kind: str,
    url: str,
    bodies: list[bytes],
    x: float,
    seconds: float,
    pids: list[int],
    headers: dict[str, str] | None = None,
    warmup: float = 1.0,
) -> dict[str, Any]:
    """Run one load phase with the load generator (its own process); returns latency percentiles, errors, RPS and
    server CPU.

    Open loop (`kind="open"`, `x` requests per second) also returns `statuses` (status, or the transport failure:
    timeout, connection_refused, connection_reset, error -> count) and `shed_with_retry_after` (503 answers
    carrying Retry-After); `headers` are added to each request, and the first `warmup` seconds of an open loop
    are sent but not counted.
    """
    return summarize([load_window(kind, url, bodies, x, seconds, pids, headers, warmup)])


# ---------------------------------------------------------------- setup
def _postgres_db() -> tuple[str, str]:
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES.rsplit("/", 1)[0]
    return name, f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"


def _drop_db(name: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _prepare(work: Path) -> tuple[PlatformSettings, Path, list[bytes]]:
    settings = PlatformSettings(work_dir=work, feast_config_file="feature_store_redis_postgres.yaml")
    raw_path = work / "raw.parquet"
    run_ingest(raw_path, n_transactions=50_000, n_days=40, seed=5)
    feats = run_features(raw_path, settings)
    splits = {n: work / f"{n}.parquet" for n in ("train", "validation", "test")}
    run_training_set(raw_path, settings, 7, 7, splits["train"], splits["validation"], splits["test"])
    model_dir = work / "model"
    run_train(splits["train"], splits["validation"], model_dir, TrainConfig(max_epochs=3), settings)
    raw = pd.read_parquet(raw_path)
    when = int(pd.Timestamp(feats.materialized_until).timestamp()) + 60
    rng = np.random.default_rng(0)
    sample = raw.sample(2000, random_state=0)
    bodies = [
        json.dumps(
            {
                "instances": [
                    {
                        "customer_id": int(r.customer_id),
                        "merchant_id": int(r.merchant_id),
                        "amount": round(float(r.amount) * float(rng.uniform(0.5, 2.0)), 2),
                        "timestamp": when + i,
                    }
                ]
            }
        ).encode()
        for i, r in enumerate(sample.itertuples())
    ]
    return settings, model_dir, bodies


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"baseline server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def measure(
    targets: dict[str, tuple[str, list[int]]], bodies: list[bytes], rates: list[float], seconds: float, repeats: int
) -> dict[str, dict[str, Any]]:
    """Each target (name -> (URL, server pids)), all up at once, measured in turn: every open-loop rate in `repeats`
    windows of `seconds`, alternating between the targets so that both see the same machine, pooled per target;
    then closed loop at 4, 8 and 16 workers (maximum throughput)."""
    for url, pids in targets.values():
        run_load("closed", url, bodies, 4, 3, pids)  # warm-up
    out: dict[str, dict[str, Any]] = {name: {"max_rps": None, "closed_loop": [], "at_rate": []} for name in targets}
    for rate in rates:
        windows: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for _ in range(repeats):
            for name, (url, pids) in targets.items():
                windows[name].append(load_window("open", url, bodies, rate, seconds, pids))
        for name in targets:
            out[name]["at_rate"].append(summarize(windows[name]))
    for workers in (4, 8, 16):
        for name, (url, pids) in targets.items():
            out[name]["closed_loop"].append(run_load("closed", url, bodies, workers, seconds, pids))
    for result in out.values():
        result["max_rps"] = max(r["rps"] for r in result["closed_loop"])
    return out


@contextlib.contextmanager
def prepared_stack(work_dir: Path | None = None) -> Iterator[tuple[Path, Path, list[bytes], dict[str, str]]]:
    """A fresh Feast registry database and Redis db, data, features and a trained model (`_prepare`): yields the work
    folder, the model folder, request bodies and the serving processes' environment; cleans Redis and the database."""
    import redis

    host, port = REDIS.rsplit(":", 1)
    flush = redis.Redis(host=host, port=int(port), db=REDIS_DB)
    flush.flushdb()
    db_name, registry_url = _postgres_db()
    os.environ["MLPLATFORM_FEAST_REDIS"] = f"{REDIS},db={REDIS_DB}"
    os.environ["MLPLATFORM_FEAST_REGISTRY"] = registry_url
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = work_dir or Path(tmp)
            settings, model_dir, bodies = _prepare(work)
            env = {
                "MLPLATFORM_SERVING_MODEL_VERSION": "1",
                "MLPLATFORM_SERVING_FEAST_REPO_PATH": str(settings.feast_repo),
                "MLPLATFORM_SERVING_FEAST_CONFIG_FILE": settings.feast_config_file,
                "MLPLATFORM_SERVING_FEAST_DATA_DIR": str(settings.feast_data),
                "MLPLATFORM_SERVING_PREDICTION_LOG_DIR": str(work / "predictions"),
            }
            yield work, model_dir, bodies, env
    finally:
        flush.flushdb()
        _drop_db(db_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", type=float, nargs="+", default=[50, 100, 200, 300])
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of each load window.")
    parser.add_argument("--repeats", type=int, default=3, help="Open-loop windows per rate and target (pooled).")
    parser.add_argument("--work-dir", type=Path, default=None, help="Keep data, model and server logs here.")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "serving.json")
    args = parser.parse_args()

    with prepared_stack(args.work_dir) as (work, model_dir, bodies, env):
        results: dict[str, Any] = {"machine": {**describe(), "wake_latency": wake_latency()}}  # idle, before servers
        base_port = free_port()
        baseline = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "baseline_server.py"), str(model_dir), str(base_port)],
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        )
        try:
            with start_local(model_dir, env=env, log_dir=work / "logs") as service:
                _wait(f"http://127.0.0.1:{base_port}/docs", baseline)
                targets = {
                    "full_path": (service.predict_url, [p.pid for p in service.processes.values()]),
                    "baseline": (f"http://127.0.0.1:{base_port}/predict", [baseline.pid]),
                }
                results.update(measure(targets, bodies, args.rates, args.seconds, args.repeats))
        finally:
            baseline.terminate()
            baseline.wait(30)
    results["full_path_vs_baseline_max_rps"] = round(
        results["full_path"]["max_rps"] / results["baseline"]["max_rps"], 3
    )
    results["load_generator"] = LOAD_GENERATOR
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
