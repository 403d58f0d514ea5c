"""The event publisher against a real Kafka broker that goes away (mlplatform.events, docs/adr/0018-event-stream.md).

The broker here is a second one of scripts/kafka.sh (own port and data folder), stopped and started by the tests:
the shared test broker stays up for the others.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from mlplatform.events import PREDICTIONS, Publisher

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEYS = 12


class Broker:
    """A broker of its own, started and stopped with scripts/kafka.sh."""

    def __init__(self, state: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "MLPLATFORM_KAFKA_PORT": str(port),
            "MLPLATFORM_KAFKA_CONTROLLER_PORT": str(port + 1 if port < 65535 else port - 1),
            "MLPLATFORM_SERVICES_DIR": str(state),
        }

    def _script(self, command: str) -> None:
        subprocess.run(["bash", str(ROOT / "scripts" / "kafka.sh"), command], env=self.env, check=True, timeout=120)

    def up(self) -> None:
        self._script("up")

    def down(self) -> None:
        self._script("down")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "services")
    b.up()
    admin = AdminClient({"bootstrap.servers": b.address})
    admin.create_topics([NewTopic(PREDICTIONS.name, num_partitions=3, replication_factor=1)])[PREDICTIONS.name].result(
        60
    )
    try:
        yield b
    finally:
        b.down()


def _wait(condition, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _consume_all(address: str, expected: int) -> dict[str, list[int]]:
    """Every event of the predictions topic, by key, in partition order."""
    consumer = Consumer({"bootstrap.servers": address, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(PREDICTIONS.name, p, 0) for p in range(3)])
    by_key: dict[str, list[int]] = defaultdict(list)
    seen = 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                if seen >= expected:
                    break
                continue
            assert msg.error() is None, msg.error()
            by_key[msg.key().decode()].append(json.loads(msg.value())["seq"])
            seen += 1
    finally:
        consumer.close()
    return by_key


def _publish(publisher: Publisher, seqs: range) -> None:
    for i in seqs:
        publisher.publish(PREDICTIONS, i % KEYS, {"record_id": f"r{i}", "seq": i})


def _exactly_once_in_order(by_key: dict[str, list[int]], n: int) -> None:
    everything = sorted(s for seqs in by_key.values() for s in seqs)
    assert everything == list(range(n)), (
        f"{n - len(set(everything))} lost, {len(everything) - len(set(everything))} duplicated"
    )
    for key, seqs in by_key.items():
        assert seqs == sorted(seqs), f"key {key}: out of order"


def test_an_outage_loses_nothing_duplicates_nothing_and_the_backlog_drains(broker: Broker, tmp_path: Path) -> None:
    publisher = Publisher(broker.address, tmp_path / "spool", max_queued=100)
    _publish(publisher, range(200))
    _wait(lambda: publisher.backlog() == 0, 30, "the first events to be acknowledged")
    broker.down()
    started = time.monotonic()
    _publish(publisher, range(200, 700))  # 100 fit the producer's queue, the rest go to the spool
    assert time.monotonic() - started < 5, "publishing blocked while the broker was down"
    spool = tmp_path / "spool" / "spool.jsonl"
    backlog = publisher.backlog()
    assert backlog == 500 and spool.exists(), (
        f"backlog {backlog}, spooled lines {len(spool.read_text().splitlines()) if spool.exists() else 0}"
    )
    broker.up()
    _wait(lambda: publisher.backlog() == 0, 90, "the backlog to drain once the broker is back")
    _publish(publisher, range(700, 750))
    assert publisher.close() == 0
    _exactly_once_in_order(_consume_all(broker.address, 750), 750)


def test_what_is_unsent_at_close_is_spooled_and_sent_by_the_next_publisher(broker: Broker, tmp_path: Path) -> None:
    broker.down()
    first = Publisher(broker.address, tmp_path / "spool")
    _publish(first, range(300))
    assert first.close(timeout_seconds=1) == 300  # nothing reached a broker: everything is on disk
    broker.up()
    second = Publisher(broker.address, tmp_path / "spool")
    _wait(lambda: second.backlog() == 0, 90, "the spool of the previous process to be replayed")
    _publish(second, range(300, 320))
    assert second.close() == 0
    _exactly_once_in_order(_consume_all(broker.address, 320), 320)
