"""The monitor's Kafka inputs against the real broker: the horizon by message time, restarts, duplicates, labels."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer

from mlplatform.events import LABELS, PREDICTIONS, SCHEMA_VERSION
from mlplatform.monitoring.inputs import KafkaInputs
from mlplatform.monitoring.settings import MonitorSettings
from tests.integration.conftest import KAFKA_ADDR

pytestmark = pytest.mark.integration

HOUR = 3600.0


def record(i: int, served: float, version: str = "1") -> dict:
    return {
        "record_id": f"tx-{i}",
        "transaction_id": f"tx-{i}",
        "model_name": "fraud-detector",
        "model_version": version,
        "served_at": datetime.fromtimestamp(served, UTC).isoformat(),
        "customer_id": i % 7,
        "score": 0.1,
        "features": {},
        "schema_version": SCHEMA_VERSION,
    }


def test_kafka_inputs_read_the_horizon_once_each_and_a_restart_reads_the_same(kafka_prefix: str) -> None:
    now = time.time()
    producer = Producer({"bootstrap.servers": KAFKA_ADDR, "enable.idempotence": True})
    topic = kafka_prefix + PREDICTIONS.name
    # Two days old (outside a 1-day horizon, by the message's own timestamp), then 30 recent ones, five of them
    # delivered twice, one version-2 record of an id version 1 also scored, and a value that is not a record.
    for i in range(10):
        producer.produce(topic, json.dumps(record(i, now - 2 * 86_400)), b"0", timestamp=int((now - 2 * 86_400) * 1e3))
    for i in range(100, 130):
        producer.produce(topic, json.dumps(record(i, now - HOUR)), str(i % 7).encode())
    for i in range(100, 105):
        producer.produce(topic, json.dumps(record(i, now - HOUR)), str(i % 7).encode())
    producer.produce(topic, json.dumps(record(100, now - HOUR, version="2")), b"2")
    producer.produce(topic, b"not json", b"3")
    labels = kafka_prefix + LABELS.name
    for when, label in ((now - 50, 0), (now - 10, 1)):  # a corrected chargeback: the later label wins
        value = {"transaction_id": "tx-100", "label": label, "label_timestamp": datetime.fromtimestamp(when, UTC)}
        producer.produce(labels, json.dumps({**value, "schema_version": SCHEMA_VERSION}, default=str), b"2")
    assert producer.flush(30) == 0

    settings = MonitorSettings(kafka_bootstrap_servers=KAFKA_ADDR, kafka_topic_prefix=kafka_prefix)
    seen = []
    for _ in range(2):  # the second is a restarted monitor in the same group
        inputs = KafkaInputs(settings, "monitor-test", horizon_seconds=86_400)
        try:
            got = inputs.predictions("fraud-detector", float("-inf"), False, None, None)  # only the horizon limits
            known = inputs.labels()
            assert inputs.skipped == 1
        finally:
            inputs.close()
        seen.append(sorted((r["record_id"], r["model_version"]) for r in got))
        assert known["tx-100"].label == 1
    assert seen[0] == seen[1]
    assert seen[0] == sorted([(f"tx-{i}", "1") for i in range(100, 130)] + [("tx-100", "2")])
