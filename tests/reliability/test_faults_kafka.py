"""The event publisher against a real Kafka broker that goes away (mlplatform.events, docs/adr/0018-event-stream.md).

The broker here is a second one of scripts/kafka.sh (own port and data folder), stopped and started by the tests:
the shared test broker stays up for the others.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from mlplatform.events import PREDICTIONS, TRANSACTIONS, Publisher, ensure_topics
from tests.reliability.stack import TOKEN, Stack, record_result

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEYS = 12


class Broker:
    """A broker of its own, started and stopped with scripts/kafka.sh."""

    def __init__(self, state: Path) -> None:
        # Two ports the kernel hands out as free at once (port + 1 could be any client's ephemeral port).
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            b.bind(("127.0.0.1", 0))
            port, controller = a.getsockname()[1], b.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "MLPLATFORM_KAFKA_PORT": str(port),
            "MLPLATFORM_KAFKA_CONTROLLER_PORT": str(controller),
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
    for attempt in range(3):  # a port taken between choosing it and the broker binding it: choose again
        b = Broker(tmp_path / f"services-{attempt}")
        try:
            b.up()
            break
        except subprocess.CalledProcessError:
            b.down()
            if attempt == 2:
                raise
    admin = AdminClient({"bootstrap.servers": b.address})
    admin.create_topics([NewTopic(PREDICTIONS.name, num_partitions=3, replication_factor=1)])[PREDICTIONS.name].result(
        60
    )
    ensure_topics(b.address, (TRANSACTIONS,))
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


def _consume_all(address: str, expected: int, field: str = "seq") -> dict[str, list]:
    """`field` of every event of the predictions topic, by key, in partition order."""
    consumer = Consumer({"bootstrap.servers": address, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(PREDICTIONS.name, p, 0) for p in range(3)])
    by_key: dict[str, list] = defaultdict(list)
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
            by_key[msg.key().decode()].append(json.loads(msg.value())[field])
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


RATE = 100.0
OUTAGE_SECONDS = 30.0


def test_the_endpoint_answers_through_a_broker_outage_and_every_prediction_arrives_once(
    broker: Broker, stack: Stack, tmp_path: Path
) -> None:
    """Issue 15 item 6: the broker stopped for 30 s under 100 RPS: no client error, the backlog drains once it is
    back, and every answered prediction is in the predictions topic exactly once."""
    import httpx

    service = stack.serve(
        "kafka-outage",
        auth_token=TOKEN,
        kafka_bootstrap_servers=broker.address,
        event_spool_dir=str(tmp_path / "spool"),
    )
    headers = {"authorization": f"Bearer {TOKEN}"}
    template = stack.valid_transactions(1)[0]
    statuses: dict[int, int] = {}
    answered: dict[str, float] = {}
    lock = threading.Lock()

    def send(client: httpx.Client, i: int) -> None:
        tx = {**template, "transaction_id": f"outage-{i}", "amount": 10.0 + i % 50}
        try:
            r = client.post(service.predict_url, json={"instances": [tx]}, headers=headers)
            status = r.status_code
        except httpx.HTTPError:
            status = 0
        with lock:
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                answered[tx["transaction_id"]] = r.json()["predictions"][0]["score"]

    def backlog(client: httpx.Client) -> float:
        text = client.get(f"{service.url}/metrics").text
        return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith("mlplatform_event_backlog{"))

    stop = threading.Event()
    phases: dict[str, float] = {}

    def outage(client: httpx.Client) -> None:
        time.sleep(5)
        broker.down()
        phases["down_at"] = time.monotonic()
        time.sleep(OUTAGE_SECONDS)
        phases["backlog_before_broker_back"] = backlog(client)
        broker.up()
        phases["up_at"] = time.monotonic()
        time.sleep(5)
        stop.set()

    with httpx.Client(timeout=10, limits=httpx.Limits(max_connections=16)) as client, ThreadPoolExecutor(16) as pool:
        chaos = threading.Thread(target=outage, args=(client,))
        chaos.start()
        start, i = time.monotonic(), 0
        while not stop.is_set():
            time.sleep(max(0.0, start + i / RATE - time.monotonic()))
            pool.submit(send, client, i)
            i += 1
        pool.shutdown(wait=True)
        chaos.join()
        peak = backlog(client)
        _wait(lambda: backlog(client) == 0, 90, "the transformer's event backlog to drain")
        drained = time.monotonic() - phases["up_at"]
    codes = service.stop()
    figures = {"requests": i, "statuses": statuses, "outage_seconds": OUTAGE_SECONDS, "rate": RATE}
    figures.update({"backlog_before_broker_back": phases["backlog_before_broker_back"], "backlog_after_load": peak})
    figures["drained_seconds_after_broker_back"] = round(drained, 1)
    assert statuses == {200: i}, f"client errors during the outage: {figures}"
    assert figures["backlog_before_broker_back"] >= 2 * RATE * OUTAGE_SECONDS * 0.9, f"events not held: {figures}"
    assert codes["transformer"] == 0
    published = [tx for ids in _consume_all(broker.address, len(answered), "transaction_id").values() for tx in ids]
    figures.update({"published": len(published), "distinct": len(set(published))})
    record_result("kafka_outage", figures)
    assert sorted(published) == sorted(answered), f"lost or duplicated predictions: {figures}"
