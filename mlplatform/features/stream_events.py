"""Transaction events on the stream: their schema, parsing them, and publishing past transactions (backfill).

What serving/transformer.py publishes for each answered transaction and what the stream feature processor
(`mlplatform.features.stream`) consumes: one definition for both (ADR 0018's table, docs/adr/0019-stream-features.md).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from confluent_kafka import KafkaException, Producer

from mlplatform.data.generator import N_CATEGORIES
from mlplatform.events import SCHEMA_VERSION, TRANSACTIONS, KafkaConnection
from mlplatform.features.compute import unix_seconds

_LOG = logging.getLogger(__name__)


class PoisonEvent(ValueError):
    """A message that is not a transaction event of the known schema (it goes to the dead-letter topic)."""


@dataclass(frozen=True)
class TransactionEvent:
    """One answered transaction as the stream carries it; `merchant_category` -1 when the merchant was unknown."""

    record_id: str
    customer_id: int
    merchant_category: int
    amount: float
    event_unix_s: float


def _number(doc: dict[str, Any], name: str) -> float:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PoisonEvent(f"{name} must be a finite number, got {value!r}")
    return float(value)


def parse_transaction(value: bytes | None) -> TransactionEvent:
    """The transaction event in a message's value.

    Raises:
        PoisonEvent: Naming what is wrong: not JSON, another schema version, a field missing or of the wrong type.
    """
    try:
        doc = json.loads(value or b"")
    except (TypeError, ValueError) as exc:
        raise PoisonEvent(f"the value is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PoisonEvent("the value is not a JSON object")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise PoisonEvent(f"schema_version {doc.get('schema_version')!r} is not {SCHEMA_VERSION}")
    record_id = doc.get("record_id")
    if not isinstance(record_id, str) or not record_id:
        raise PoisonEvent(f"record_id must be a non-empty string, got {record_id!r}")
    customer = doc.get("customer_id")
    if isinstance(customer, bool) or not isinstance(customer, int):
        raise PoisonEvent(f"customer_id must be an integer, got {customer!r}")
    category = doc.get("merchant_category")
    if category is None:
        category = -1  # the merchant was unknown to the online store: counts in no category's share
    elif isinstance(category, bool) or not isinstance(category, int) or not 0 <= category < N_CATEGORIES:
        raise PoisonEvent(f"merchant_category must be null or an integer in 0..{N_CATEGORIES - 1}, got {category!r}")
    amount = _number(doc, "amount")
    if amount < 0:
        raise PoisonEvent(f"amount must not be negative, got {amount!r}")
    return TransactionEvent(record_id, customer, category, amount, _number(doc, "event_unix_s"))


def timestamps(unix_s: Sequence[float] | np.ndarray) -> pd.DatetimeIndex:
    """Event times in seconds as UTC timestamps, to the microsecond (the resolution of the generated data)."""
    micros = np.round(np.asarray(unix_s, dtype=np.float64) * 1e6).astype(np.int64)
    return pd.DatetimeIndex(pd.to_datetime(micros, unit="us", utc=True))


def transaction_event(
    record_id: str,
    transaction_id: str | None,
    customer_id: int,
    merchant_id: int,
    merchant_category: int | None,
    amount: float,
    event_unix_s: float,
) -> dict[str, Any]:
    """A transaction event as the transformer publishes it (the value, without `schema_version`)."""
    return {
        "record_id": record_id,
        "transaction_id": transaction_id,
        "customer_id": customer_id,
        "merchant_id": merchant_id,
        "merchant_category": merchant_category,
        "amount": amount,
        "event_unix_s": event_unix_s,
    }


def backfill(transactions: pd.DataFrame, connection: KafkaConnection, timeout_seconds: float = 300.0) -> int:
    """Publish raw transactions (the generator's or the data lake's columns) to the transactions topic, in time
    order: how a new stream gets the 30 days of history its windows need. Returns the number published.

    Raises:
        KafkaException: When the broker did not acknowledge every event within the timeout.
    """
    if not connection.kafka_bootstrap_servers:
        raise ValueError("backfill needs kafka_bootstrap_servers")
    producer = Producer(
        {
            "bootstrap.servers": connection.kafka_bootstrap_servers,
            "enable.idempotence": True,
            "linger.ms": 20,
            "logger": _LOG,
            **connection.kafka_client_config(),
        }
    )
    topic = connection.topic_name(TRANSACTIONS)
    tx = transactions.sort_values("event_timestamp", kind="stable")
    t = unix_seconds(tx["event_timestamp"])
    columns = zip(
        tx["transaction_id"],
        tx["customer_id"],
        tx["merchant_id"],
        tx["merchant_category"],
        tx["amount"],
        t,
        strict=True,
    )
    for record, customer, merchant, category, amount, when in columns:
        value = transaction_event(
            str(record), str(record), int(customer), int(merchant), int(category), float(amount), float(when)
        )
        data = json.dumps({**value, "schema_version": SCHEMA_VERSION}, separators=(",", ":")).encode()
        while True:
            try:
                producer.produce(topic, data, str(int(customer)).encode())
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(timeout_seconds)
    if left:
        raise KafkaException(f"{left} backfilled events were not acknowledged within {timeout_seconds:.0f}s")
    return len(tx)
