"""Replay generated traffic through a local endpoint with the event stream on, and compare online with offline.

The check of issue 15 item 3: what serving sees equals what training sees for the same event. The history is
backfilled into the transactions topic and the stream feature processor catches up; then the replay's
transactions, with their generated (real) timestamps, are sent in time order at a fixed rate through the
transformer, which publishes each answered one; the processor pushes each customer's new aggregates. Afterwards
every answered request's features (from the prediction log) are compared with `get_historical_features` for the
same event. A request is excused, and counted as such, when the customer's previous transaction was not yet
visible online when the request was sent (it followed the previous one by less than the freshness lag).

The freshness lag of an event is the wall time from its request being sent to its customer's row being pushed.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.events import TRANSACTIONS, KafkaConnection
from mlplatform.features.compute import (
    CUSTOMER_FRESHNESS_S,
    MODEL_CUSTOMER_FEATURES,
    ON_DEMAND_FEATURES,
    model_input_arrays,
    request_fields,
    unix_seconds,
)
from mlplatform.features.store import FEATURE_SERVICE, open_store
from mlplatform.features.stream import FeastSink, StreamFeatureProcessor, StreamSettings, group_lag
from mlplatform.features.stream_events import backfill
from mlplatform.local.serving import start_local
from mlplatform.monitoring.drift import Window
from mlplatform.monitoring.predictions import load_predictions
from mlplatform.monitoring.references import ReferenceResolver
from mlplatform.monitoring.settings import MonitorSettings
from mlplatform.monitoring.windows import evaluate
from mlplatform.settings import PlatformSettings

#: The served features that depend on the customer's history (the rest depend on the request or the merchant).
CUSTOMER_DEPENDENT = (*MODEL_CUSTOMER_FEATURES, *ON_DEMAND_FEATURES)
#: Largest difference counted as equal.
TOLERANCE = 1e-6


class RecordingSink(FeastSink):
    """A FeastSink that notes when each (customer, event time) row became visible."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.visible: dict[tuple[int, int], float] = {}

    def push(self, rows: pd.DataFrame) -> None:
        super().push(rows)
        now = time.time()
        event_us = (unix_seconds(rows["event_timestamp"]) - CUSTOMER_FRESHNESS_S) * 1e6
        for customer, us in zip(rows["customer_id"].to_numpy(), np.round(event_us).astype(np.int64), strict=True):
            self.visible.setdefault((int(customer), int(us)), now)


@dataclass
class ReplayResult:
    """What the replay measured (the JSON of `make bench-streaming` and the assertions of its test)."""

    requests: int
    answered: int
    statuses: dict[str, int]
    compared: int
    mismatches: int
    within_lag: int
    max_abs_diff: float
    freshness_lag_p50_s: float | None
    freshness_lag_p99_s: float | None
    events_lost: int
    duplicates: int
    rate: float
    mismatched_features: dict[str, int] = field(default_factory=dict)
    #: The monitor's PSI per served feature on the replayed traffic against the model's training reference.
    feature_psi: dict[str, float] = field(default_factory=dict)
    #: The monitor's training-serving skew (standardized mean difference) per served feature.
    feature_skew: dict[str, float] = field(default_factory=dict)
    #: PSI per feature over the requests served fresh features (the within-lag ones left out): what the monitor
    #: would see at a real pace, where a customer's transactions are rarely less than the lag apart.
    feature_psi_fresh: dict[str, float] = field(default_factory=dict)
    excused: list[str] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "excused"}


def _event_us(unix_s: float) -> int:
    return int(round(unix_s * 1e6))


async def _send(url: str, bodies: list[tuple[str, bytes]], rate: float) -> dict[str, tuple[float, float, int]]:
    """Open loop at `rate`: returns transaction id -> (sent, answered, status) in wall time."""
    import aiohttp

    out: dict[str, tuple[float, float, int]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(tid: str, body: bytes) -> None:
            sent = time.time()
            try:
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                    await r.read()
                    out[tid] = (sent, time.time(), r.status)
            except (aiohttp.ClientError, TimeoutError):
                out[tid] = (sent, time.time(), 0)

        start = time.perf_counter()
        tasks = []
        for i, (tid, body) in enumerate(bodies):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(tid, body)))
        await asyncio.gather(*tasks)
    return out


def request_bodies(replay: pd.DataFrame) -> list[tuple[str, bytes]]:
    t = unix_seconds(replay["event_timestamp"])
    return [
        (
            str(r.transaction_id),
            json.dumps(
                {
                    "instances": [
                        {
                            "customer_id": int(r.customer_id),
                            "merchant_id": int(r.merchant_id),
                            "amount": float(r.amount),
                            "timestamp": float(t[i]),
                            "transaction_id": str(r.transaction_id),
                        }
                    ]
                }
            ).encode(),
        )
        for i, r in enumerate(replay.itertuples(index=False))
    ]


def _wait_caught_up(settings: StreamSettings, processor_thread: threading.Thread, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while group_lag(settings) > 0:
        if not processor_thread.is_alive():
            raise RuntimeError("the stream feature processor stopped")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the stream feature processor did not catch up within {timeout:.0f}s")
        time.sleep(0.2)


def _duplicates(connection: KafkaConnection, group: str) -> tuple[int, set[str]]:
    """Record ids seen more than once in the transactions topic, and every record id in it."""
    from confluent_kafka import Consumer, KafkaError

    consumer = Consumer(
        {
            "bootstrap.servers": connection.kafka_bootstrap_servers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **connection.kafka_client_config(),
        }
    )
    topic = connection.topic_name(TRANSACTIONS)
    consumer.subscribe([topic])
    counts: Counter[str] = Counter()
    eof: set[int] = set()
    deadline = time.monotonic() + 120
    try:
        while len(eof) < TRANSACTIONS.partitions and time.monotonic() < deadline:
            for m in consumer.consume(10_000, 1.0):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof.add(m.partition())
                    continue
                counts[json.loads(m.value())["record_id"]] += 1
    finally:
        consumer.close()
    return sum(c - 1 for c in counts.values()), set(counts)


def replay_through_endpoint(
    platform: PlatformSettings,
    stream: StreamSettings,
    model_dir: Path,
    history: pd.DataFrame,
    replay: pd.DataFrame,
    *,
    rate: float,
    work: Path,
    serving_env: dict[str, str],
    catch_up_seconds: float = 600.0,
) -> ReplayResult:
    """Backfill `history`, serve `model_dir` with publishing on, send `replay` at `rate`, compare online with
    offline (see the module's docstring). The Feast store of `platform` must hold the features step's output for
    `history` (the repo applied); `serving_env` holds what the serving processes need to open it."""
    backfill(history, stream)
    sink = RecordingSink(open_store(platform.feast_repo, platform.feast_data, platform.feast_config_file))
    processor = StreamFeatureProcessor(stream, sink)
    thread = threading.Thread(target=processor.run, name="stream-features", daemon=True)
    thread.start()
    try:
        _wait_caught_up(stream, thread, catch_up_seconds)
        env = {
            **serving_env,
            "MLPLATFORM_SERVING_KAFKA_BOOTSTRAP_SERVERS": str(stream.kafka_bootstrap_servers),
            "MLPLATFORM_SERVING_KAFKA_TOPIC_PREFIX": stream.kafka_topic_prefix,
            "MLPLATFORM_SERVING_EVENT_SPOOL_DIR": str(work / "spool"),
            "MLPLATFORM_SERVING_PREDICTION_LOG_DIR": str(work / "predictions"),
            "MLPLATFORM_SERVING_PREDICTION_LOG_FLUSH_SECONDS": "0.05",
        }
        started = time.time()
        with start_local(model_dir, env=env, log_dir=work / "logs") as service:
            answers = asyncio.run(_send(service.predict_url, request_bodies(replay), rate))
        _wait_caught_up(stream, thread, catch_up_seconds)
    finally:
        processor.stop_event.set()
        thread.join(timeout=60)
    records = load_predictions(work / "predictions", platform.registered_model_name, started - 1)
    duplicates, published = _duplicates(stream, f"{stream.group_id}-audit-{time.time_ns()}")
    result = _compare(platform, replay, answers, records, sink.visible, duplicates, published, rate)
    result.feature_psi, result.feature_skew = _drift(platform, model_dir, records)
    excused = set(result.excused)
    fresh = [r for r in records if r.get("transaction_id") not in excused]
    result.feature_psi_fresh, _ = _drift(platform, model_dir, fresh)
    return result


def _drift(
    platform: PlatformSettings, model_dir: Path, records: list[dict[str, Any]]
) -> tuple[dict[str, float], dict[str, float]]:
    """What the monitor reports of the replayed traffic: PSI and skew per feature against the training reference."""
    if not records:
        return {}, {}
    end = max(r["_served_unix_s"] for r in records) + 1
    span = end - min(r["_served_unix_s"] for r in records) + 1
    settings = MonitorSettings(min_window_predictions=1)
    window = Window.ending(end, span)
    result = evaluate(records, {}, window, window, settings, ReferenceResolver(platform, model_dir))
    [version] = result.versions
    if version.error:
        raise RuntimeError(version.error)
    return (
        {f.feature: round(float(f.psi), 4) for f in version.features},
        {f.feature: round(float(f.skew), 4) for f in version.features},
    )


def _compare(
    platform: PlatformSettings,
    replay: pd.DataFrame,
    answers: dict[str, tuple[float, float, int]],
    records: list[dict[str, Any]],
    visible: dict[tuple[int, int], float],
    duplicates: int,
    published: set[str],
    rate: float,
) -> ReplayResult:
    statuses = Counter(str(s) for _, _, s in answers.values())
    answered = {tid for tid, (_, _, s) in answers.items() if s == 200}
    served = {r["transaction_id"]: r for r in records if r.get("transaction_id") in answered}
    tx = replay[replay["transaction_id"].isin(served)].reset_index(drop=True)
    store = open_store(platform.feast_repo, platform.feast_data, platform.feast_config_file)
    entity = pd.concat(
        [tx[["transaction_id", "customer_id", "merchant_id", "event_timestamp"]], request_fields(tx)], axis=1
    )
    offline = store.get_historical_features(entity_df=entity, features=store.get_feature_service(FEATURE_SERVICE))
    offline = offline.to_df().set_index("transaction_id").loc[tx["transaction_id"]]
    # As the model gets them: a value the store has not (a new customer) takes its default, on both sides.
    expected = model_input_arrays({f: offline[f].to_numpy() for f in CUSTOMER_DEPENDENT}, CUSTOMER_DEPENDENT, float)
    t = unix_seconds(tx["event_timestamp"])

    # Each customer's previous transaction (history or replay) and when its row became visible online.
    previous: dict[str, tuple[int, int]] = {}
    last: dict[int, int] = {}
    everything = unix_seconds(replay["event_timestamp"])
    for tid, customer, when in zip(replay["transaction_id"], replay["customer_id"], everything, strict=True):
        if int(customer) in last:
            previous[str(tid)] = (int(customer), last[int(customer)])
        last[int(customer)] = _event_us(float(when))

    mismatches = 0
    excused: list[str] = []
    max_diff = 0.0
    by_feature: Counter[str] = Counter()
    for i, tid in enumerate(tx["transaction_id"]):
        online = served[tid]["features"]
        diffs = {f: abs(float(online[f]) - float(expected[i, j])) for j, f in enumerate(CUSTOMER_DEPENDENT)}
        bad = {f: d for f, d in diffs.items() if not d <= TOLERANCE}
        if not bad:
            continue
        prev = previous.get(str(tid))
        sent_at = answers[tid][0]  # the lookup happens after the request was sent
        if prev is not None and visible.get(prev, float("inf")) > sent_at:
            excused.append(str(tid))
            continue
        mismatches += 1
        max_diff = max(max_diff, *bad.values())
        by_feature.update(bad)
    lags = [
        visible[(int(c), _event_us(float(w)))] - answers[str(tid)][0]
        for tid, c, w in zip(tx["transaction_id"], tx["customer_id"], t, strict=True)
        if (int(c), _event_us(float(w))) in visible
    ]
    lost = sum(
        1
        for tid, c, w in zip(tx["transaction_id"], tx["customer_id"], t, strict=True)
        if str(tid) not in published or (int(c), _event_us(float(w))) not in visible
    )
    pct = (lambda q: round(float(np.percentile(lags, q)), 4)) if lags else (lambda q: None)
    return ReplayResult(
        requests=len(answers),
        answered=len(answered),
        statuses=dict(statuses),
        compared=len(tx),
        mismatches=mismatches,
        within_lag=len(excused),
        max_abs_diff=max_diff,
        freshness_lag_p50_s=pct(50),
        freshness_lag_p99_s=pct(99),
        events_lost=lost,
        duplicates=duplicates,
        rate=rate,
        mismatched_features=dict(by_feature),
        excused=excused,
    )
