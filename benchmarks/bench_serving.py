"""Serving benchmark: the full local path (KServe transformer + predictor, Feast online store in the real
Redis) against a one-process FastAPI baseline doing the same lookup and model call, in the same run.

For each target: open-loop load at fixed rates (latency counted from each request's scheduled send
time, so a slow server cannot hide queueing), then closed-loop load (workers send back to back) for
the maximum throughput. The load generator runs in its own process on the same machine. Needs
`make services` (Redis, PostgreSQL). Writes JSON with the machine described; no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
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
from machine import describe  # benchmarks/machine.py, beside this script

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


# ---------------------------------------------------------------- load generator (own process)
async def _open_loop(
    url: str,
    bodies: list[bytes],
    rate: float,
    seconds: float,
    warmup: float = 1.0,
    extra_headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Requests at `rate` per second; the first `warmup` seconds open connections and are not counted."""
    import aiohttp

    skip = int(rate * warmup)
    n = int(rate * seconds) + skip
    latencies: list[float] = []
    errors = 0
    statuses: dict[str, int] = {}  # status (or the exception's name: TimeoutError, ...) -> count, counted requests
    shed_with_retry_after = 0  # 503 answers that carry Retry-After
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=5)
    headers = {"content-type": "application/json", **(extra_headers or {})}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int, scheduled: float) -> None:
            nonlocal errors, shed_with_retry_after
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                    await r.read()
                    if i >= skip:
                        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
                        shed_with_retry_after += r.status == 503 and "Retry-After" in r.headers
                    if r.status != 200:
                        errors += i >= skip
                        return
            except Exception as exc:
                errors += i >= skip
                if i >= skip:
                    statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                return
            if i >= skip:
                latencies.append(time.perf_counter() - scheduled)

        start = time.perf_counter() + 0.05
        await asyncio.gather(*(one(i, start + i / rate) for i in range(n)))
        wall = time.perf_counter() - start - warmup
    return {
        "latencies": latencies,
        "errors": errors,
        "sent": n - skip,
        "total": n,
        "wall": wall,
        "statuses": statuses,
        "shed_with_retry_after": shed_with_retry_after,
    }


async def _closed_loop(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict[str, Any]:
    import aiohttp

    done = 0
    errors = 0
    latencies: list[float] = []
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as session:
        end = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            nonlocal done, errors
            i = k
            while time.perf_counter() < end:
                t = time.perf_counter()
                try:
                    async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                        await r.read()
                        ok = r.status == 200
                except Exception:
                    ok = False
                i += concurrency
                if ok:
                    done += 1
                    latencies.append(time.perf_counter() - t)
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - start
    return {"latencies": latencies, "errors": errors, "sent": done + errors, "total": done + errors, "wall": wall}


def _load_process(
    kind: str,
    url: str,
    bodies: list[bytes],
    x: float,
    seconds: float,
    out: Any,
    headers: dict[str, str] | None,
    warmup: float = 1.0,
) -> None:
    if kind == "open":
        coro = _open_loop(url, bodies, x, seconds, warmup, extra_headers=headers)
    else:
        coro = _closed_loop(url, bodies, int(x), seconds)
    out.put(asyncio.run(coro))


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
    """Run one load phase in a separate process; returns latency percentiles, errors, RPS and server CPU.

    Open loop (`kind="open"`, `x` requests per second) also returns `statuses` (status or exception name ->
    count) and `shed_with_retry_after` (503 answers carrying Retry-After); `headers` are added to each request,
    and the first `warmup` seconds of an open loop are sent but not counted.
    """
    procs = [psutil.Process(p) for p in pids]
    cpu0 = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load_process, args=(kind, url, bodies, x, seconds, queue, headers, warmup))
    proc.start()
    result = queue.get()
    proc.join()
    cpu = sum(p.cpu_times().user + p.cpu_times().system for p in procs) - cpu0
    lat = np.array(result["latencies"]) * 1000
    pct = (lambda q: round(float(np.percentile(lat, q)), 2)) if len(lat) else (lambda q: None)
    return {
        "rps": round(len(lat) / result["wall"], 1),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "errors": result["errors"],
        "requests": result["sent"],
        "server_cpu_ms_per_request": round(1000 * cpu / max(result["total"], 1), 2),
        **{k: result[k] for k in ("statuses", "shed_with_retry_after") if k in result},
    }


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


def measure(url: str, bodies: list[bytes], pids: list[int], rates: list[float], seconds: float) -> dict[str, Any]:
    run_load("closed", url, bodies, 4, 3, pids)  # warm-up
    at_rate = [run_load("open", url, bodies, r, seconds, pids) for r in rates]
    closed = [run_load("closed", url, bodies, c, seconds, pids) for c in (4, 8, 16)]
    best = max(closed, key=lambda r: r["rps"])
    return {"max_rps": best["rps"], "closed_loop": closed, "at_rate": at_rate}


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
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--work-dir", type=Path, default=None, help="Keep data, model and server logs here.")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "serving.json")
    args = parser.parse_args()

    with prepared_stack(args.work_dir) as (work, model_dir, bodies, env):
        results: dict[str, Any] = {"machine": describe()}
        with start_local(model_dir, env=env, log_dir=work / "logs") as service:
            pids = [p.pid for p in service.processes.values()]
            results["full_path"] = measure(service.predict_url, bodies, pids, args.rates, args.seconds)
        base_port = free_port()
        baseline = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "baseline_server.py"), str(model_dir), str(base_port)],
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        )
        try:
            _wait(f"http://127.0.0.1:{base_port}/docs", baseline)
            url = f"http://127.0.0.1:{base_port}/predict"
            results["baseline"] = measure(url, bodies, [baseline.pid], args.rates, args.seconds)
        finally:
            baseline.terminate()
            baseline.wait(30)
    results["full_path_vs_baseline_max_rps"] = round(
        results["full_path"]["max_rps"] / results["baseline"]["max_rps"], 3
    )
    results["load_generator"] = (
        "aiohttp, its own process on the same machine; open loop at fixed rates, then closed loop"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
