"""Where the monitor reads predictions and labels: the local files, or the event stream (one interface).

`FileInputs` reads the transformer's prediction log and the label folder (the embedded default: `make run` needs
no broker). `KafkaInputs` consumes the predictions and labels topics (docs/adr/0018-event-stream.md) as a member
of a consumer group, as on a cluster, where the monitor then mounts no transformer volume. Both hand
`windows.evaluate_windows` the same records and labels, so drift and quality are computed by one code path;
`open_inputs` chooses by the settings (`MLPLATFORM_MONITOR_KAFKA_BOOTSTRAP_SERVERS`).

The stream's records are kept in memory for the monitor's horizon (the longer of its drift and quality windows,
by served time): on every partition it is assigned, the consumer starts at the first offset of that horizon (by
the messages' timestamps), so a restarted monitor sees the same window as the one before it. Records are
deduplicated by record id and model version (the transformer delivers at least once across its restarts); for a
transaction labelled twice the label with the latest label time wins, as in the label folder.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Container, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from mlplatform.data.labels import Label, LabelFeedError, parse_label, read_labels, record_key
from mlplatform.events import LABELS, PREDICTIONS, SCHEMA_VERSION, KafkaConnection
from mlplatform.monitoring.predictions import load_predictions, select_records, served_unix_s
from mlplatform.monitoring.settings import MonitorSettings
from mlplatform.settings import PlatformSettings

_LOG = logging.getLogger(__name__)


class MonitorInputs(Protocol):
    """Predictions and labels for one evaluation."""

    #: Where they come from, for messages.
    source: str

    def labels(self) -> dict[str, Label]:
        """The known label of each transaction id."""
        ...

    def predictions(
        self,
        model_name: str,
        since_unix_s: float,
        missing_ok: bool,
        full_since_unix_s: float | None,
        labelled: Container[str] | None,
    ) -> list[dict[str, Any]]:
        """Records of `model_name` served after `since_unix_s` (see `predictions.select_records`)."""
        ...

    def close(self) -> None: ...


class FileInputs:
    """The prediction log folder and the label folder (the embedded default)."""

    def __init__(self, log_dir: Path, label_dir: Path) -> None:
        self.log_dir = log_dir
        self.label_dir = label_dir
        self.source = f"log {log_dir}"

    def labels(self) -> dict[str, Label]:
        return read_labels(self.label_dir)

    def predictions(
        self,
        model_name: str,
        since_unix_s: float,
        missing_ok: bool,
        full_since_unix_s: float | None,
        labelled: Container[str] | None,
    ) -> list[dict[str, Any]]:
        return load_predictions(self.log_dir, model_name, since_unix_s, missing_ok, full_since_unix_s, labelled)

    def close(self) -> None:
        pass


class KafkaInputs:
    """The predictions and labels topics, consumed by a group member that catches up before every read.

    Args:
        connection: The brokers and the topic prefix.
        group_id: The consumer group (its committed offsets show the monitor's lag; reads start by time).
        horizon_seconds: How far back records are kept and read from.
        catch_up_seconds: Longest wait to reach the topics' ends at a read.
    """

    def __init__(
        self,
        connection: KafkaConnection,
        group_id: str,
        horizon_seconds: float,
        catch_up_seconds: float = 60.0,
    ) -> None:
        if not connection.kafka_bootstrap_servers:
            raise ValueError("KafkaInputs needs kafka_bootstrap_servers")
        self.horizon_seconds = horizon_seconds
        self.catch_up_seconds = catch_up_seconds
        self.topics = {connection.topic_name(PREDICTIONS): "predictions", connection.topic_name(LABELS): "labels"}
        self.source = f"topics {', '.join(self.topics)} on {connection.kafka_bootstrap_servers}"
        self._consumer = Consumer(
            {
                "bootstrap.servers": connection.kafka_bootstrap_servers,
                "group.id": group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "logger": _LOG,
                **connection.kafka_client_config(),
            }
        )
        self._consumer.subscribe(list(self.topics), on_assign=self._assigned)
        self._records: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._labels: dict[str, Label] = {}
        self._next: dict[tuple[str, int], int] = {}  # per partition: the next offset to read
        self._lock = threading.Lock()  # one read at a time: the consumer is not for two threads
        self.skipped = 0  # values that were not a record or a label (logged, left out)

    def labels(self) -> dict[str, Label]:
        with self._lock:
            self._catch_up()
            return dict(self._labels)

    def predictions(
        self,
        model_name: str,
        since_unix_s: float,
        missing_ok: bool,
        full_since_unix_s: float | None,
        labelled: Container[str] | None,
    ) -> list[dict[str, Any]]:
        with self._lock:
            self._catch_up()
            records = [dict(r) for r in self._records.values()]
        return select_records(records, model_name, since_unix_s, full_since_unix_s, labelled)

    def close(self) -> None:
        with self._lock:
            self._consumer.close()

    # ------------------------------------------------------------------ internals
    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Start each partition at the horizon (by message time), whatever the group committed."""
        since_ms = int((time.time() - self.horizon_seconds) * 1000)
        wanted = [TopicPartition(tp.topic, tp.partition, since_ms) for tp in partitions]
        starts = []
        for tp in consumer.offsets_for_times(wanted, timeout=30):
            # No message since the horizon: start at the end (an explicit offset, so progress is measurable).
            offset = tp.offset if tp.offset >= 0 else consumer.get_watermark_offsets(tp, timeout=30)[1]
            self._next[(tp.topic, tp.partition)] = offset
            starts.append(TopicPartition(tp.topic, tp.partition, offset))
        consumer.assign(starts)

    def _catch_up(self) -> None:
        """Consume until every assigned partition is at the end it had when the read began."""
        deadline = time.monotonic() + self.catch_up_seconds
        while not self._consumer.assignment():
            self._take(self._consumer.consume(1000, 0.2))
            if time.monotonic() > deadline:
                raise TimeoutError(f"no partition of {self.source} was assigned within {self.catch_up_seconds}s")
        assigned = self._consumer.assignment()
        ends = {(tp.topic, tp.partition): self._consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in assigned}
        while True:
            behind = [k for k, end in ends.items() if self._next.get(k, 0) < end]
            if not behind:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.source}: still behind on {behind} after {self.catch_up_seconds}s")
            self._take(self._consumer.consume(10_000, 0.2))
        self._prune()
        if self._next:
            try:
                self._consumer.commit(asynchronous=False)  # the group's lag shows how far behind the monitor is
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError._NO_OFFSET:
                    raise

    def _take(self, messages: Iterable[Any]) -> None:
        for m in messages:
            if m.error() is not None:
                if m.error().fatal():
                    raise KafkaException(m.error())
                continue
            kind = self.topics.get(m.topic())
            key = (m.topic(), m.partition())
            self._next[key] = max(self._next.get(key, 0), m.offset() + 1)
            try:
                value = json.loads(m.value() or b"")
                if not isinstance(value, dict) or value.get("schema_version") != SCHEMA_VERSION:
                    raise ValueError(f"not a schema version {SCHEMA_VERSION} object")
                if kind == "labels":
                    self._add_label(parse_label(value, f"{m.topic()}[{m.partition()}]@{m.offset()}"))
                else:
                    self._add_record(value)
            except (ValueError, LabelFeedError) as exc:
                self.skipped += 1
                _LOG.warning("skipped %s[%d]@%d: %s", m.topic(), m.partition(), m.offset(), exc)

    def _add_record(self, record: dict[str, Any]) -> None:
        key = record_key(record)
        served = served_unix_s(record)
        if key is None or served is None:
            raise ValueError("a prediction record needs a record id and served_at")
        record.pop("schema_version", None)
        # A record delivered twice is one prediction; the same transaction scored by two versions is two.
        self._records[(key, str(record.get("model_name")), str(record.get("model_version")))] = record

    def _add_label(self, label: Label) -> None:
        old = self._labels.get(label.transaction_id)
        if old is None or label.label_timestamp_unix_s >= old.label_timestamp_unix_s:
            self._labels[label.transaction_id] = label

    def _prune(self) -> None:
        oldest = time.time() - self.horizon_seconds
        for key in [k for k, r in self._records.items() if (served_unix_s(r) or 0) < oldest]:
            del self._records[key]


def open_inputs(settings: MonitorSettings, platform: PlatformSettings, count: int = 1) -> MonitorInputs:
    """The stream where Kafka is configured, else the local files; `count` drift windows must fit the horizon."""
    if settings.kafka_bootstrap_servers:
        horizon = max(settings.window_seconds * count, settings.quality_window_seconds)
        return KafkaInputs(settings, settings.kafka_group_id, horizon)
    return FileInputs(settings.log_dir(platform), settings.label_dir(platform))


def publish_labels(labels: pd.DataFrame, customers: Mapping[str, int], connection: KafkaConnection) -> int:
    """Publish labels (`emit_labels`'s frame) to the labels topic, keyed by each transaction's customer.

    Raises:
        LabelFeedError: When a label's customer is unknown.
        KafkaException: When the broker did not acknowledge them within a minute.
    """
    producer = Producer(
        {
            "bootstrap.servers": connection.kafka_bootstrap_servers,
            "enable.idempotence": True,
            "logger": _LOG,
            **connection.kafka_client_config(),
        }
    )
    topic = connection.topic_name(LABELS)
    ts = pd.to_datetime(labels["label_timestamp"], utc=True)
    for tid, label, when in zip(labels["transaction_id"].astype(str), labels["label"].astype(int), ts, strict=True):
        if tid not in customers:
            raise LabelFeedError(f"no customer known for transaction {tid}")
        value = {
            "transaction_id": tid,
            "label": int(label),
            "label_timestamp": when.isoformat(),
            "schema_version": SCHEMA_VERSION,
        }
        producer.produce(topic, json.dumps(value).encode(), str(customers[tid]).encode())
        producer.poll(0)
    left = producer.flush(60)
    if left:
        raise KafkaException(f"{left} labels were not acknowledged within 60s")
    return len(labels)
