"""Streaming benchmark (issue 15 item 7): the stream feature processor and the endpoint with publishing on.

In one run, on the real broker (scripts/kafka.sh), Redis and PostgreSQL (`make services`):
1. `events_per_s`: one processor catching up on a backfilled topic (the history below), pushing to the Redis online
   store as on a cluster (online only), from its first poll to its last commit.
2. The replay (`mlplatform.local.stream_replay`): two days of generated traffic with their own timestamps sent at
   200 requests/s through the local transformer and predictor with publishing on while a processor runs (pushing
   online and offline); `freshness_lag_p50_s`/`p99_s` (a request sent -> its customer's row online),
   `online_offline_mismatches` beyond the reported lag window, `events_lost`, `duplicates`.
3. The endpoint's latency at 100 RPS with publishing on and off, same model, same requests, one after the other.
Writes JSON with the machine described; no assertions (targets in the issue and the README).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import redis
from bench_serving import POSTGRES, REDIS, _drop_db, _postgres_db, run_load  # benchmarks/, beside this script
from machine import describe

from components.features.step import run_features
from components.train.step import run_train
from components.training_set.step import run_training_set
from mlplatform.data.generator import GeneratorConfig, generate_transactions
from mlplatform.events import ensure_topics
from mlplatform.features.store import open_store
from mlplatform.features.stream import FeastSink, StreamFeatureProcessor, StreamSettings, group_lag
from mlplatform.features.stream_events import backfill
from mlplatform.local.serving import start_local
from mlplatform.local.stream_replay import replay_through_endpoint, request_bodies
from mlplatform.settings import PlatformSettings
from mlplatform.training.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
KAFKA = os.environ.get("MLPLATFORM_TEST_KAFKA", "127.0.0.1:19092")
REDIS_DB = 14


def stream_settings(prefix: str, group: str, push_offline: bool) -> StreamSettings:
    ensure_topics(KAFKA, prefix=prefix)
    return StreamSettings(
        kafka_bootstrap_servers=KAFKA, kafka_topic_prefix=prefix, group_id=group, port=0, push_offline=push_offline
    )


def throughput(settings: PlatformSettings, history: pd.DataFrame) -> dict[str, Any]:
    """One processor through a backfilled topic, online pushes to Redis only (the chart's configuration)."""
    stream = stream_settings(f"bench-{uuid.uuid4().hex[:8]}.", "throughput", push_offline=False)
    backfill(history, stream)
    store = open_store(settings.feast_repo, settings.feast_data, settings.feast_config_file)
    processor = StreamFeatureProcessor(stream, FeastSink(store, offline=False))
    thread = threading.Thread(target=processor.run, daemon=True)
    thread.start()
    # Timed from the first batch committed (the processor's own counter), so the group join is not counted.
    while not processor.registry.get_sample_value("mlplatform_stream_events_total", {"outcome": "pushed"}):
        time.sleep(0.001)
    started = time.perf_counter()
    while group_lag(stream) > 0:
        time.sleep(0.05)
    wall = time.perf_counter() - started
    processor.stop_event.set()
    thread.join(60)
    pushed = processor.registry.get_sample_value("mlplatform_stream_events_total", {"outcome": "pushed"}) or 0
    return {
        "events": int(pushed),
        "seconds": round(wall, 2),
        "events_per_s": round(pushed / wall, 1),
        "batch_size": stream.batch_size,
        "online_store": "redis",
        "note": "from the first batch committed to the group's last commit (the group join excluded)",
    }


def endpoint_latency(model_dir: Path, env: dict[str, str], bodies: list[bytes], seconds: float, work: Path) -> dict:
    """p50/p99 at 100 RPS with publishing on and off (each on a fresh pair of serving processes)."""
    out = {}
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    ensure_topics(KAFKA, prefix=prefix)
    publishing = {
        "MLPLATFORM_SERVING_KAFKA_BOOTSTRAP_SERVERS": KAFKA,
        "MLPLATFORM_SERVING_KAFKA_TOPIC_PREFIX": prefix,
        "MLPLATFORM_SERVING_EVENT_SPOOL_DIR": str(work / "latency-spool"),
    }
    for name, extra in (("publishing_off", {}), ("publishing_on", publishing)):
        with start_local(model_dir, env={**env, **extra}, log_dir=work / f"logs-{name}") as service:
            pids = [p.pid for p in service.processes.values()]
            run_load("closed", service.predict_url, bodies, 4, 3, pids)  # warm-up
            out[name] = run_load("open", service.predict_url, bodies, 100, seconds, pids)
    out["p99_on_minus_off_ms"] = round(out["publishing_on"]["p99_ms"] - out["publishing_off"]["p99_ms"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=50_000)
    parser.add_argument("--days", type=int, default=50)
    parser.add_argument("--replay-days", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="Length of each latency phase.")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "streaming.json")
    args = parser.parse_args()

    flush = redis.Redis(host=REDIS.rsplit(":", 1)[0], port=int(REDIS.rsplit(":", 1)[1]), db=REDIS_DB)
    flush.flushdb()
    db_name, registry_url = _postgres_db()
    feast_env = {"MLPLATFORM_FEAST_REDIS": f"{REDIS},db={REDIS_DB}", "MLPLATFORM_FEAST_REGISTRY": registry_url}
    os.environ.update(feast_env)
    results: dict[str, Any] = {"machine": describe(), "broker": "Apache Kafka 4.1.2, one node (KRaft) on loopback"}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            tx = generate_transactions(GeneratorConfig(n_transactions=args.transactions, n_days=args.days, seed=5))
            cutoff = tx["event_timestamp"].max() - pd.Timedelta(days=args.replay_days)
            history, replay = tx[tx["event_timestamp"] < cutoff], tx[tx["event_timestamp"] >= cutoff]
            settings = PlatformSettings(work_dir=work / "work", feast_config_file="feature_store_redis_postgres.yaml")
            raw = work / "history.parquet"
            history.to_parquet(raw, index=False)
            run_features(raw, settings)
            splits = {n: work / f"{n}.parquet" for n in ("train", "validation", "test")}
            # After a 30-day warm-up, as the replay is served: every window full (the data's first month has partial
            # windows, a drift of its own that is not staleness).
            run_training_set(raw, settings, 4, 4, splits["train"], splits["validation"], splits["test"], warmup_days=30)
            model_dir = work / "model"
            run_train(splits["train"], splits["validation"], model_dir, TrainConfig(max_epochs=2), settings)
            serving_env = {
                **feast_env,
                "MLPLATFORM_SERVING_MODEL_VERSION": "1",
                "MLPLATFORM_SERVING_FEAST_REPO_PATH": str(settings.feast_repo),
                "MLPLATFORM_SERVING_FEAST_CONFIG_FILE": settings.feast_config_file,
                "MLPLATFORM_SERVING_FEAST_DATA_DIR": str(settings.feast_data),
            }
            results["data"] = {
                "transactions": len(tx),
                "history": len(history),
                "replayed": len(replay),
                "replay_span_days": args.replay_days,
            }
            results["processor"] = throughput(settings, history)
            print(json.dumps(results["processor"]))
            stream = stream_settings(f"bench-{uuid.uuid4().hex[:8]}.", "replay", push_offline=True)
            replayed = replay_through_endpoint(
                settings,
                stream,
                model_dir,
                history,
                replay,
                rate=args.rate,
                work=work / "replay",
                serving_env=serving_env,
            ).as_dict()
            results["replay"] = replayed
            print(json.dumps(replayed))
            bodies = [b for _, b in request_bodies(replay)]
            results["endpoint_at_100_rps"] = endpoint_latency(model_dir, serving_env, bodies, args.seconds, work)
    finally:
        flush.flushdb()
        _drop_db(db_name)
    r = results["replay"]
    results["summary"] = {
        "events_per_s": results["processor"]["events_per_s"],
        "freshness_lag_p50_s": r["freshness_lag_p50_s"],
        "freshness_lag_p99_s": r["freshness_lag_p99_s"],
        "freshness_rate_per_s": args.rate,
        "online_offline_mismatches": r["mismatches"],
        "within_lag_window": r["within_lag"],
        "events_lost": r["events_lost"],
        "duplicates": r["duplicates"],
        "endpoint_p99_publishing_on_ms": results["endpoint_at_100_rps"]["publishing_on"]["p99_ms"],
        "endpoint_p99_publishing_off_ms": results["endpoint_at_100_rps"]["publishing_off"]["p99_ms"],
    }
    results["postgres"] = POSTGRES.rsplit("@", 1)[-1]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    main()
