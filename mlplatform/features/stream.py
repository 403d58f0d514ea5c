"""The stream feature processor: each customer's aggregates from the transactions topic into Feast within a second.

A consumer group on `mlplatform.transactions` (docs/adr/0019-stream-features.md). Each process holds, for the
partitions assigned to it, every customer's transactions of the longest window (30 days) and, for each batch of
events, computes the customers' rows with `compute.customer_features`, the function the batch features step
runs (one implementation: the stream and the training sets cannot disagree on what a feature means). The rows are
pushed through the Feast push source `customer_stats_push`: appended to the offline history (the customer batch
source) and the latest row of each customer written to the online store. Offsets are committed only after the
push succeeded, so a processor that dies mid-batch leaves its batch uncommitted and the next owner of the
partition processes it again.

State is the topic itself: when a partition is assigned, the processor reads it from its start to the committed
offset (the topic keeps 31 days) and rebuilds the windows without pushing anything, so a replay gives the same
rows as the uninterrupted run (a deterministic function of the partition's events) and scaling out is adding
processes (up to the partition count). Events carry a record id; one seen before in the window is skipped, since
the transformer's publisher delivers at least once across its restarts.

A message that is not a transaction event of the known schema goes to the dead-letter topic with headers naming
where it came from and why, is counted, and never stops the consumer.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlplatform import metric_names as names
from mlplatform.events import DEAD_LETTER, TRANSACTIONS, KafkaConnection
from mlplatform.features.compute import (
    CUSTOMER_FEATURES,
    CUSTOMER_FRESHNESS_S,
    CUSTOMER_WINDOWS_S,
    customer_features,
)
from mlplatform.features.stream_events import PoisonEvent, TransactionEvent, parse_transaction, timestamps
from mlplatform.http import HttpServerSettings
from mlplatform.http_servers import MetricsServer

_LOG = logging.getLogger(__name__)

#: The Feast push source of the customer feature view (feature_repo/fraud_features.py).
CUSTOMER_PUSH_SOURCE = "customer_stats_push"
#: How far back a customer's transactions matter: the longest window (and a second of slack).
HORIZON_S = float(max(CUSTOMER_WINDOWS_S.values())) + 1.0
#: Fields of a transaction event (what serving/transformer.py publishes; ADR 0018's table).
EVENT_FIELDS = ("record_id", "customer_id", "merchant_category", "amount", "event_unix_s")


class StreamSettings(HttpServerSettings, KafkaConnection, BaseSettings):
    """Settings of `mlplatform features stream`, read from `MLPLATFORM_STREAM_<FIELD NAME>` variables."""

    model_config = SettingsConfigDict(env_prefix="MLPLATFORM_STREAM_", extra="forbid")

    group_id: str = Field(default="mlplatform-stream-features", min_length=1, description="Kafka consumer group.")
    batch_size: int = Field(default=2000, ge=1, le=100_000, description="Most events processed and pushed at once.")
    poll_seconds: float = Field(
        default=0.2,
        gt=0,
        le=10,
        description="Longest wait for the next event; a batch is then what has arrived (up to batch_size), never "
        "waiting to fill.",
    )
    push_retry_seconds: float = Field(
        default=1.0, gt=0, description="Wait before a failed push (Feast store down) is tried again."
    )
    push_offline: bool = Field(
        default=True,
        description="Append the rows to the offline store too; off where the offline files are not shared with the "
        "pipeline (a cluster's pipeline rebuilds them from the raw data with the same function each run).",
    )
    session_timeout_seconds: float = Field(
        default=10.0,
        ge=6,
        le=300,
        description="A processor that stops heartbeating (killed) loses its partitions to the others after this "
        "long: the longest gap in freshness a crash causes (the broker allows 6 s and more).",
    )
    port: int = Field(default=8090, ge=0, le=65_535, description="Port of /metrics and /healthz (0: any free one).")
    stale_after_seconds: float = Field(
        default=60.0, gt=0, description="/healthz fails when no batch was committed or polled for this long."
    )

    @model_validator(mode="after")
    def _needs_brokers(self) -> StreamSettings:
        if not self.kafka_bootstrap_servers:
            raise ValueError("MLPLATFORM_STREAM_KAFKA_BOOTSTRAP_SERVERS is not set: the processor needs the brokers")
        return self

    def consumer_config(self) -> dict[str, Any]:
        """The librdkafka settings of the group's consumer."""
        return {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "group.id": self.group_id,
            "enable.auto.commit": False,  # committed after the push, never before
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "session.timeout.ms": int(self.session_timeout_seconds * 1000),
            "logger": _LOG,
            **self.kafka_client_config(),
        }


class CustomerHistory:
    """Each customer's transactions within `HORIZON_S` before their earliest new event: a partition's state.

    An event that arrives later than that after the ones it precedes cannot correct their rows any more.
    """

    def __init__(self) -> None:
        self._events: dict[int, dict[str, tuple[float, float, int]]] = {}

    def __len__(self) -> int:
        return sum(len(e) for e in self._events.values())

    def add(self, events: Iterable[TransactionEvent]) -> tuple[dict[int, float], int]:
        """Add events (a record id seen before is skipped).

        Returns:
            Per customer with a new event, the earliest new event time; and how many events were new.
        """
        since: dict[int, float] = {}
        added = 0
        for e in events:
            mine = self._events.setdefault(e.customer_id, {})
            if e.record_id in mine:
                continue
            mine[e.record_id] = (e.event_unix_s, e.amount, e.merchant_category)
            since[e.customer_id] = min(since.get(e.customer_id, math.inf), e.event_unix_s)
            added += 1
        for customer, earliest in since.items():
            self._prune(customer, earliest - HORIZON_S)
        return since, added

    def _prune(self, customer: int, before: float) -> None:
        """Forget a customer's transactions before `before`: no row from the new events on can see them."""
        mine = self._events[customer]
        for r in [r for r, (t, _, _) in mine.items() if t < before]:
            del mine[r]

    def rows(self, since: dict[int, float]) -> pd.DataFrame:
        """The feature rows of these customers from their new events on, as the batch features step computes them.

        A row is timestamped `CUSTOMER_FRESHNESS_S` after its transaction; every row at or after a customer's
        earliest new event is recomputed, so an event that arrives out of order corrects the rows after it.
        """
        customers: list[int] = []
        t: list[float] = []
        amount: list[float] = []
        category: list[int] = []
        for c in since:
            for tt, a, k in self._events[c].values():
                customers.append(c)
                t.append(tt)
                amount.append(a)
                category.append(k)
        tx = pd.DataFrame(
            {
                "customer_id": np.asarray(customers, dtype=np.int64),
                "merchant_category": np.asarray(category, dtype=np.int64),
                "amount": np.asarray(amount, dtype=np.float64),
                "event_timestamp": timestamps(t),
            }
        )
        out = customer_features(tx)
        cutoff = pd.Series(timestamps([since[c] for c in since]), index=list(since))
        keep = out["event_timestamp"].to_numpy() >= cutoff.reindex(out["customer_id"]).to_numpy() + pd.Timedelta(
            seconds=CUSTOMER_FRESHNESS_S
        )
        return out[keep].reset_index(drop=True)


class FeatureSink(Protocol):
    """Where the processor's rows go: `push` raises when they could not be stored (the batch is then retried)."""

    def push(self, rows: pd.DataFrame) -> None: ...


class FeastSink:
    """Pushes rows through the Feast push source: all of them to the offline store, each customer's latest online.

    Only the latest row per customer goes online since some online stores (SQLite) overwrite without comparing
    timestamps; the rows of a batch are sorted by customer and time, so the last one is the newest.

    Args:
        store: The platform's Feast store (the repo applied).
        offline: Append to the offline store too (`StreamSettings.push_offline`).
    """

    def __init__(self, store: Any, offline: bool = True) -> None:
        self.store = store
        self.offline = offline

    def push(self, rows: pd.DataFrame) -> None:
        from feast.data_source import PushMode

        latest = rows.drop_duplicates("customer_id", keep="last")
        self.store.push(CUSTOMER_PUSH_SOURCE, latest, to=PushMode.ONLINE)  # first: what serving waits for
        if self.offline:
            self.store.push(CUSTOMER_PUSH_SOURCE, rows, to=PushMode.OFFLINE)


class StreamMetrics:
    """The processor's Prometheus families (names in mlplatform/metric_names.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            names.STREAM_EVENTS,
            "Transaction events consumed, by outcome: pushed, duplicate (a record id seen before) or dead_letter.",
            ["outcome"],
            registry=registry,
        )
        self.push_errors = Counter(
            names.STREAM_PUSH_ERRORS,
            "Pushes to Feast that failed (the batch is retried, not committed).",
            registry=registry,
        )
        self.push_seconds = Histogram(
            names.STREAM_PUSH_SECONDS,
            "Time to push one batch of feature rows to Feast (offline append and online write).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.freshness = Histogram(
            names.STREAM_FRESHNESS_SECONDS,
            "From an event's publication (its Kafka timestamp) to its customer's features being pushed.",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5, 10, 30, 60),
            registry=registry,
        )
        self.state = Gauge(
            names.STREAM_STATE_EVENTS, "Transactions held for the assigned partitions' windows.", registry=registry
        )
        self.last_commit = Gauge(names.STREAM_LAST_COMMIT, "Unix time of the last committed batch.", registry=registry)
        for outcome in ("pushed", "duplicate", "dead_letter"):
            self.events.labels(outcome=outcome)


class StreamFeatureProcessor:
    """Consumes the transactions topic as a member of `settings.group_id` and keeps the customer features fresh.

    Args:
        settings: Brokers, group and batching.
        sink: Where feature rows go (`FeastSink` of the platform's store).
        registry: Where the metrics are registered.
    """

    def __init__(self, settings: StreamSettings, sink: FeatureSink, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.sink = sink
        self.registry = registry or CollectorRegistry()
        self.metrics = StreamMetrics(self.registry)
        self._config = settings.consumer_config()
        self._consumer = Consumer(self._config)
        self._dead = Producer(
            {
                "bootstrap.servers": self._config["bootstrap.servers"],
                "enable.idempotence": True,
                "logger": _LOG,
                **settings.kafka_client_config(),
            }
        )
        self._history: dict[int, CustomerHistory] = {}
        self._alive = time.time()
        self.stop_event = threading.Event()

    # ------------------------------------------------------------------ running
    def run(self) -> None:
        """Consume until `stop_event` is set; then commit nothing more and leave the group."""
        self._consumer.subscribe(
            [self.settings.topic_name(TRANSACTIONS)], on_assign=self._assigned, on_revoke=self._revoked
        )
        try:
            while not self.stop_event.is_set():
                self.poll_once()
        finally:
            self._consumer.close()
            self._dead.flush(10)

    def poll_once(self) -> int:
        """Consume, process and commit one batch; returns the number of messages in it."""
        # Wait for the first event only, then take what has already arrived: a batch never waits to fill, so a
        # quiet stream adds no latency and a busy one still gets large batches.
        messages = self._consumer.consume(1, self.settings.poll_seconds)
        if messages and self.settings.batch_size > 1:
            messages += self._consumer.consume(self.settings.batch_size - 1, 0)
        self._alive = time.time()
        batch = []
        for m in messages:
            error = m.error()
            if error is None:
                batch.append(m)
            elif error.fatal():
                raise KafkaException(error)
            elif error.code() != KafkaError._PARTITION_EOF:
                _LOG.warning("consumer: %s", error)
        if batch:
            self._process(batch)
        return len(batch)

    def serve(self) -> None:
        """Run as a process: /metrics and /healthz on `settings.port`, consume until SIGTERM or Ctrl-C."""
        server = MetricsServer(
            self.registry,
            self.settings.port,
            self.settings,
            healthy=self.healthy,
            unhealthy_message=f"no batch polled or committed for {self.settings.stale_after_seconds:.0f}s",
            name="stream-metrics",
        )
        port = server.start()
        _LOG.info(
            "stream feature processor: group %s, /metrics on %s:%d", self.settings.group_id, self.settings.host, port
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        try:
            self.run()
        finally:
            server.stop()

    def healthy(self) -> bool:
        """The loop polled or committed within `stale_after_seconds` (a push that keeps failing makes it stale)."""
        return time.time() - self._alive < self.settings.stale_after_seconds

    # ------------------------------------------------------------------ one batch
    def _process(self, messages: list[Message]) -> None:
        events: dict[int, list[TransactionEvent]] = {}
        published: list[float] = []
        dead = 0
        for m in messages:
            try:
                events.setdefault(m.partition(), []).append(parse_transaction(m.value()))
                published.append(m.timestamp()[1] / 1000.0)
            except PoisonEvent as exc:
                self._dead_letter(m, str(exc))
                dead += 1
        rows = []
        pushed = 0
        for partition, evs in events.items():
            history = self._history.setdefault(partition, CustomerHistory())
            since, added = history.add(evs)
            pushed += added
            if since:
                rows.append(history.rows(since))
        if rows:
            self._push(pd.concat(rows, ignore_index=True))
        if dead:
            self._dead.flush(30)  # a dead letter is in its topic before its offset is committed
        self._commit(messages)
        now = time.time()
        for t in published:
            if t > 0:
                self.metrics.freshness.observe(max(now - t, 0.0))
        self.metrics.events.labels(outcome="pushed").inc(pushed)
        self.metrics.events.labels(outcome="duplicate").inc(len(messages) - dead - pushed)
        self.metrics.events.labels(outcome="dead_letter").inc(dead)
        self.metrics.state.set(sum(len(h) for h in self._history.values()))

    def _push(self, rows: pd.DataFrame) -> None:
        while True:
            started = time.perf_counter()
            try:
                self.sink.push(rows[["customer_id", "event_timestamp", *CUSTOMER_FEATURES]])
                self.metrics.push_seconds.observe(time.perf_counter() - started)
                return
            except Exception:
                self.metrics.push_errors.inc()
                _LOG.exception(
                    "pushing %d feature rows failed; retrying in %.1fs", len(rows), self.settings.push_retry_seconds
                )
                if self.stop_event.wait(self.settings.push_retry_seconds):
                    raise

    def _commit(self, messages: list[Message]) -> None:
        last: dict[tuple[str, int], int] = {}
        for m in messages:
            key = (m.topic(), m.partition())
            last[key] = max(last.get(key, -1), m.offset())
        self._consumer.commit(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()], asynchronous=False)
        self.metrics.last_commit.set(time.time())

    def _dead_letter(self, message: Message, reason: str) -> None:
        _LOG.warning("dead letter %s[%d]@%d: %s", message.topic(), message.partition(), message.offset(), reason)
        self._dead.produce(
            self.settings.topic_name(DEAD_LETTER),
            message.value(),
            message.key(),
            headers={
                "mlplatform.topic": message.topic(),
                "mlplatform.partition": str(message.partition()),
                "mlplatform.offset": str(message.offset()),
                "mlplatform.error": reason[:1000],
            },
        )

    # ------------------------------------------------------------------ partitions coming and going
    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = consumer.committed(partitions, timeout=30)
        for tp in committed:
            self._history[tp.partition] = self._rebuild(tp.partition, tp.offset)
        self.metrics.state.set(sum(len(h) for h in self._history.values()))

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._history.pop(tp.partition, None)

    def _rebuild(self, partition: int, committed: int) -> CustomerHistory:
        """The windows of a partition as they were at its committed offset: its events read again, nothing pushed."""
        history = CustomerHistory()
        if committed <= 0:
            return history
        reader = Consumer(
            {**self._config, "group.id": f"{self.settings.group_id}-rebuild", "enable.partition.eof": True}
        )
        try:
            reader.assign([TopicPartition(self.settings.topic_name(TRANSACTIONS), partition, OFFSET_BEGINNING)])
            done = False
            while not done:
                chunk = []
                for m in reader.consume(10_000, 1.0):
                    if m.error() is not None:
                        if m.error().code() == KafkaError._PARTITION_EOF:
                            done = True
                            continue
                        raise KafkaException(m.error())
                    if m.offset() >= committed:
                        done = True
                        break
                    try:
                        chunk.append(parse_transaction(m.value()))
                    except PoisonEvent:
                        continue  # dead-lettered when it was first consumed
                history.add(chunk)
        finally:
            reader.close()
        _LOG.info("partition %d: %d transactions rebuilt up to offset %d", partition, len(history), committed)
        return history


def group_lag(settings: StreamSettings, timeout_seconds: float = 30.0) -> int:
    """Events of the transactions topic the group has not committed yet (all of them before its first commit)."""
    consumer = Consumer({**settings.consumer_config(), "group.id": settings.group_id})
    try:
        topic = settings.topic_name(TRANSACTIONS)
        partitions = consumer.list_topics(topic, timeout=timeout_seconds).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout_seconds)
        lag = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout_seconds)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag
    finally:
        consumer.close()


def open_feast_sink(repo_path: Path, data_dir: Path, config_file: str, offline: bool = True) -> FeastSink:
    """A sink on the platform's Feast store (the repo must have been applied by the pipeline)."""
    from mlplatform.features.store import open_store  # deferred: Feast loads only where a store is opened

    return FeastSink(open_store(repo_path, data_dir, config_file), offline)
