"""The platform's event stream (docs/adr/0018-event-stream.md): topic names and a publisher that never loses an event.

`Publisher.publish` only enqueues: an idempotent confluent-kafka producer (acks=all) sends in its own threads,
and a thread of the publisher serves its delivery reports, off the caller's path. When the broker cannot be
reached the publisher keeps accepting events: the producer holds them in its bounded queue, and what does not
fit, or is still unsent when the publisher closes, is appended to a spool file on local disk (one JSON line per
event, flushed at once, fsync'd by the background thread). Once the broker answers again the spool is replayed
in its order before it is truncated. `backlog()` counts what is not acknowledged yet (queued plus spooled).

Delivery is exactly once per partition while the process lives (the idempotent producer retries without
duplicating, and a message is never given up: `message.timeout.ms` is unbounded). Events spooled because the queue
was full were never handed to the broker, so replaying them duplicates nothing; events still in flight at close,
and a replay cut short by a stop or a crash, are sent again on the next replay (at least once): consumers
deduplicate by the record id every event carries.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import BaseModel, Field, SecretStr, model_validator


@dataclass(frozen=True)
class Topic:
    """A topic of the platform's stream (the table of ADR 0018): keyed by customer id, JSON values."""

    name: str
    partitions: int
    retention_days: int


#: 31 days: the stream feature processor rebuilds its customers' 30-day windows from this topic when it (re)starts.
TRANSACTIONS = Topic("mlplatform.transactions", 6, 31)
PREDICTIONS = Topic("mlplatform.predictions", 6, 30)
LABELS = Topic("mlplatform.labels", 6, 180)
DEAD_LETTER = Topic("mlplatform.dead-letter", 1, 30)
TOPICS = (TRANSACTIONS, PREDICTIONS, LABELS, DEAD_LETTER)
#: Version of the events' JSON shape, in every value (`schema_version`); consumers refuse what they do not know.
SCHEMA_VERSION = 1

_LOG = logging.getLogger(__name__)


class KafkaConnection(BaseModel):
    """How a process reaches the brokers: a mixin of the settings of every process that uses the stream.

    Each field is read with its settings class's prefix (`MLPLATFORM_SERVING_KAFKA_...` for the transformer,
    `MLPLATFORM_STREAM_KAFKA_...` for the stream feature processor).
    """

    kafka_bootstrap_servers: str | None = Field(
        default=None, description="Kafka brokers (host:port,...) of the event stream (docs/adr/0018-event-stream.md)."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="How this process connects to the brokers (TLS and/or SASL)."
    )
    kafka_ssl_ca_location: Path | None = Field(
        default=None, description="CA certificate file of the brokers (TLS); unset uses the system's CAs."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism with the SASL_* protocols (Strimzi's: SCRAM-SHA-512)."
    )
    kafka_topic_prefix: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9._-]*$",
        description="Put before every topic name (tenants or test runs sharing one broker); empty on a cluster.",
    )
    kafka_sasl_username: str | None = Field(default=None, description="This process's Kafka user (SASL).")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="That user's password (SASL).")

    def topic_name(self, topic: Topic) -> str:
        """The name `topic` has on this process's brokers (with `kafka_topic_prefix`)."""
        return self.kafka_topic_prefix + topic.name

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka settings of the connection beyond the brokers' addresses (TLS, SASL)."""
        config = {"security.protocol": self.kafka_security_protocol}
        if self.kafka_ssl_ca_location is not None:
            config["ssl.ca.location"] = str(self.kafka_ssl_ca_location)
        if self.kafka_security_protocol.startswith("SASL"):
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
            config["sasl.username"] = self.kafka_sasl_username or ""
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else ""
        return config

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaConnection:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            prefix = str(getattr(self, "model_config", {}).get("env_prefix") or "")
            raise ValueError(
                f"{prefix}KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                f"{prefix}KAFKA_SASL_USERNAME and {prefix}KAFKA_SASL_PASSWORD"
            )
        return self


#: Delivery-report errors of messages the publisher itself took back (at close): spooled, not counted as refused.
_PURGED = {KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT}


def ensure_topics(
    bootstrap_servers: str, topics: tuple[Topic, ...] = TOPICS, timeout_seconds: float = 60.0, prefix: str = ""
) -> list[str]:
    """Create the topics that do not exist yet (partitions and retention as declared; one replica, as on a local
    broker: a cluster's topics come from the chart's Strimzi objects); returns the names created.

    `prefix` goes before every name (`KafkaConnection.kafka_topic_prefix`)."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "logger": _LOG})
    existing = set(admin.list_topics(timeout=timeout_seconds).topics)
    missing = [t for t in topics if prefix + t.name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(
                prefix + t.name,
                num_partitions=t.partitions,
                config={"retention.ms": str(t.retention_days * 86_400_000)},
            )
            for t in missing
        ],
        request_timeout=timeout_seconds,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout_seconds)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # created meanwhile by someone else
                raise
    _wait_for_leaders(admin, [prefix + t.name for t in missing], timeout_seconds)
    return created


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout_seconds: float) -> None:
    """Return once every partition of the topics has a leader: right after creation the broker still elects them,
    and a client asking then gets NOT_LEADER_FOR_PARTITION."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        topics = admin.list_topics(timeout=timeout_seconds).topics
        pending = [
            n
            for n in names
            if n not in topics
            or topics[n].error is not None
            or not topics[n].partitions
            or any(p.leader < 0 or p.error is not None for p in topics[n].partitions.values())
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without a leader after {timeout_seconds:.0f}s: {pending}")
        time.sleep(0.1)


class Publisher:
    """Publishes JSON events to Kafka; spools to `spool_dir` what the broker cannot take now.

    Args:
        bootstrap_servers: The brokers (`host:port,...`).
        spool_dir: A local folder of this process (one spool per publisher: not shared between processes).
        max_queued: Events the producer holds in memory before new ones go to the spool.
        config: More librdkafka settings (TLS/SASL from the chart's Secret).
        on_delivery_error: Called with the error of a message the broker refused for good (counted, spooled).
        topic_prefix: Put before every topic name (`KafkaConnection.kafka_topic_prefix`).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        spool_dir: Path,
        *,
        max_queued: int = 100_000,
        config: dict[str, Any] | None = None,
        on_delivery_error: Callable[[KafkaError], None] | None = None,
        topic_prefix: str = "",
    ) -> None:
        self._prefix = topic_prefix
        self._config = {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,  # implies acks=all and retries without duplicates
            "acks": "all",
            "message.timeout.ms": 0,  # never give a message up: an outage only delays it
            "linger.ms": 5,
            "queue.buffering.max.messages": max_queued,
            "socket.connection.setup.timeout.ms": 3000,
            "logger": _LOG,  # librdkafka's log lines (a connection refused every retry) go to logging, not stderr
            **(config or {}),
        }
        self._producer = Producer(self._config)
        self._spool = Path(spool_dir) / "spool.jsonl"
        self._spool.parent.mkdir(parents=True, exist_ok=True)
        self._replaying = self._spool.with_suffix(".replaying")
        self._lock = threading.Lock()  # guards the spool file and the mode
        self._spooled = self._count(self._spool) + self._count(self._replaying)
        self._spooling = self._spooled > 0  # events already waiting go first, in order
        self._queued = 0  # handed to the producer, no delivery report yet
        self._on_delivery_error = on_delivery_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-publisher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the caller's side
    def publish(self, topic: Topic, key: str | int, value: dict[str, Any]) -> None:
        """Hand one event over (`schema_version` is added); never blocks on the network and never raises for the
        broker's sake."""
        data = json.dumps({**value, "schema_version": SCHEMA_VERSION}, separators=(",", ":"), default=str).encode()
        self._send(self._prefix + topic.name, str(key).encode(), data)

    def backlog(self) -> int:
        """Events not acknowledged by the broker yet: in the producer's queue or in the spool."""
        return self._queued + self._spooled

    def close(self, timeout_seconds: float = 10.0) -> int:
        """Deliver what can be delivered within the timeout, spool the rest; returns the events left spooled."""
        self._stop.set()
        self._thread.join()
        self._producer.flush(timeout_seconds)
        self._producer.purge(in_queue=True, in_flight=True)  # spooled by their delivery reports
        self._producer.flush(0)
        self._fsync()
        return self._spooled

    # ------------------------------------------------------------------ internals
    def _send(self, topic: str, key: bytes, data: bytes) -> None:
        with self._lock:
            if self._spooling:
                self._append(topic, key, data)
                return
            self._queued += 1
        try:
            self._producer.produce(topic, data, key, on_delivery=self._delivered)
        except BufferError:  # the queue is full: the broker has been away for a while
            with self._lock:
                self._queued -= 1
                self._spooling = True
                self._append(topic, key, data)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None and err.code() not in _PURGED and self._on_delivery_error is not None:
            self._on_delivery_error(err)
        with self._lock:
            self._queued -= 1
            if err is not None:
                self._append(msg.topic(), msg.key() or b"", msg.value() or b"")

    def _append(self, topic: str, key: bytes, data: bytes) -> None:
        line = json.dumps({"topic": topic, "key": key.decode(), "value": data.decode()}) + "\n"
        with self._spool.open("a", encoding="utf-8") as f:
            f.write(line)
        self._spooled += 1

    @staticmethod
    def _count(path: Path) -> int:
        if not path.exists():
            return 0
        with path.open("rb") as f:
            return sum(1 for _ in f)

    def _reachable(self) -> bool:
        try:
            self._producer.list_topics(timeout=1.0)
        except KafkaException:
            return False
        return True

    def _replay(self) -> None:
        """Send the spooled events in order; the spool is emptied only once the broker acknowledged them."""
        with self._lock:
            if not self._replaying.exists():
                if not self._spool.exists():
                    self._spooling = False
                    return
                os.replace(self._spool, self._replaying)  # new events go to a new spool meanwhile
        with self._replaying.open(encoding="utf-8") as f:
            events = [json.loads(line) for line in f if line.strip()]
        failed: list[KafkaError] = []
        pending = [len(events)]

        def done(err: KafkaError | None, msg: Message) -> None:
            pending[0] -= 1
            if err is not None:
                failed.append(err)

        for event in events:
            while True:
                try:
                    self._producer.produce(
                        event["topic"], event["value"].encode(), event["key"].encode(), on_delivery=done
                    )
                    break
                except BufferError:
                    self._producer.poll(0.1)
        while pending[0] and not self._stop.is_set():
            self._producer.poll(0.1)
        if failed or pending[0]:
            return  # left in place: replayed again later (at close the unsent part is purged, not spooled twice)
        with self._lock:
            self._replaying.unlink()
            self._spooled -= len(events)
            if not self._spool.exists():
                self._spooling = False  # nothing was spooled meanwhile: publish directly again

    def _run(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)
            if self._spooled and not self._queued and self._reachable():
                self._replay()
            elif self._spooling and not self._spooled:
                with self._lock:
                    self._spooling = False
            self._fsync()
            time.sleep(0.05)

    def _fsync(self) -> None:
        with contextlib.suppress(FileNotFoundError), self._lock:
            if self._spool.exists():
                with self._spool.open("a", encoding="utf-8") as f:
                    os.fsync(f.fileno())
