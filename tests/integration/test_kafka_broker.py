"""The real Kafka broker of scripts/kafka.sh with the confluent-kafka client: idempotent producer, group consumer."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from tests.integration.conftest import KAFKA_ADDR, WAIT_SECONDS

pytestmark = pytest.mark.integration

PARTITIONS = 3
KEYS = [f"customer-{i}" for i in range(10)]
MESSAGES = 100


@pytest.fixture
def topic(kafka_topic: Callable[[int], str]) -> str:
    """A new topic with three partitions, unique to the test, deleted afterwards."""
    return kafka_topic(PARTITIONS)


def produce_keyed(topic: str) -> dict[str, int]:
    """Send MESSAGES values "<key>:<sequence>" round-robin over KEYS with an idempotent producer.

    Returns:
        The partition each key was written to.
    """
    producer = Producer(
        {
            "bootstrap.servers": KAFKA_ADDR,
            "enable.idempotence": True,
            "acks": "all",
            "queue.buffering.max.messages": 1000,  # bounded: produce() raises BufferError when full
            "linger.ms": 5,
        }
    )
    delivered: list[Message] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append(msg)

    sequence: dict[str, int] = defaultdict(int)
    for i in range(MESSAGES):
        key = KEYS[i % len(KEYS)]
        producer.produce(topic, key=key, value=f"{key}:{sequence[key]}", on_delivery=on_delivery)
        sequence[key] += 1
        producer.poll(0)
    assert producer.flush(WAIT_SECONDS) == 0, "messages still queued after flush"
    assert errors == []
    assert len(delivered) == MESSAGES
    partition_of: dict[str, set[int]] = defaultdict(set)
    for msg in delivered:
        partition_of[msg.key().decode()].add(msg.partition())
    assert all(len(parts) == 1 for parts in partition_of.values()), partition_of
    return {key: parts.pop() for key, parts in partition_of.items()}


def group_consumer(group: str) -> Consumer:
    """A consumer in `group` that commits only when told to and reports the end of each partition."""
    return Consumer(
        {
            "bootstrap.servers": KAFKA_ADDR,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )


def consume_to_end(consumer: Consumer, topic: str) -> list[Message]:
    """Every message from the consumer's position up to the end of all partitions of `topic`."""
    consumer.subscribe([topic])
    received: list[Message] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + WAIT_SECONDS
    while len(at_end) < PARTITIONS:
        assert time.monotonic() < deadline, f"reached the end of partitions {sorted(at_end)} only"
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        err = msg.error()
        if err is not None and err.code() == KafkaError._PARTITION_EOF:
            at_end.add(msg.partition())
        elif err is not None:
            raise KafkaException(err)
        else:
            received.append(msg)
            at_end.discard(msg.partition())
    return received


def test_group_consumer_reads_idempotently_produced_keyed_messages_once_in_per_key_order(topic: str) -> None:
    partition_of = produce_keyed(topic)
    consumer = group_consumer(f"group-{uuid.uuid4().hex}")
    try:
        received = consume_to_end(consumer, topic)
        committed = consumer.commit(asynchronous=False)
    finally:
        consumer.close()

    values = [msg.value().decode() for msg in received]
    assert len(values) == MESSAGES
    assert len(set(values)) == MESSAGES, "a message was delivered twice"
    by_key: dict[str, list[int]] = defaultdict(list)
    for msg in received:
        key, _, seq = msg.value().decode().partition(":")
        assert msg.key().decode() == key
        assert msg.partition() == partition_of[key]
        by_key[key].append(int(seq))
    assert by_key == {key: list(range(MESSAGES // len(KEYS))) for key in KEYS}
    assert len(set(partition_of.values())) > 1, "all keys hashed to one partition: per-key order is not exercised"
    assert sum(tp.offset for tp in committed) == MESSAGES


def test_second_consumer_in_group_gets_nothing_after_first_committed(topic: str) -> None:
    produce_keyed(topic)
    group = f"group-{uuid.uuid4().hex}"
    first = group_consumer(group)
    try:
        assert len(consume_to_end(first, topic)) == MESSAGES
        first.commit(asynchronous=False)
    finally:
        first.close()

    second = group_consumer(group)
    try:
        assert consume_to_end(second, topic) == []
        committed = second.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=WAIT_SECONDS)
    finally:
        second.close()
    assert sum(tp.offset for tp in committed) == MESSAGES
