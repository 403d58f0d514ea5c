"""The stream feature processor's pure parts: parsing events, and the customer windows it keeps (no broker)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlplatform.data.generator import GeneratorConfig, generate_transactions
from mlplatform.events import SCHEMA_VERSION
from mlplatform.features.compute import CUSTOMER_FEATURES, customer_features, unix_seconds
from mlplatform.features.stream import CustomerHistory, StreamSettings
from mlplatform.features.stream_events import PoisonEvent, TransactionEvent, parse_transaction
from mlplatform.settings import load_settings

GOOD = {
    "record_id": "tx-1",
    "customer_id": 7,
    "merchant_category": 3,
    "amount": 12.5,
    "event_unix_s": 1_767_225_600.25,
    "schema_version": SCHEMA_VERSION,
}


def test_a_transaction_event_parses_and_an_unknown_merchant_counts_in_no_category() -> None:
    assert parse_transaction(json.dumps(GOOD).encode()) == TransactionEvent("tx-1", 7, 3, 12.5, 1_767_225_600.25)
    assert parse_transaction(json.dumps({**GOOD, "merchant_category": None}).encode()).merchant_category == -1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{", "not JSON"),
        (None, "not JSON"),
        (b"[1]", "not a JSON object"),
        (json.dumps({**GOOD, "schema_version": 99}).encode(), "schema_version 99 is not"),
        (json.dumps({**GOOD, "record_id": ""}).encode(), "record_id must be a non-empty string"),
        (json.dumps({**GOOD, "customer_id": True}).encode(), "customer_id must be an integer"),
        (json.dumps({**GOOD, "merchant_category": 99}).encode(), "merchant_category must be null or an integer"),
        (json.dumps({**GOOD, "amount": -1}).encode(), "amount must not be negative"),
        (json.dumps({**GOOD, "amount": "12"}).encode(), "amount must be a finite number"),
        (b'{"record_id":"a","customer_id":1,"schema_version":1,"amount":NaN,"event_unix_s":1}', "amount must be"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "event_unix_s"}).encode(), "event_unix_s must be"),
    ],
)
def test_a_poison_message_is_refused_with_what_is_wrong(value: bytes | None, reason: str) -> None:
    with pytest.raises(PoisonEvent, match=reason):
        parse_transaction(value)


def events_of(tx: pd.DataFrame) -> list[TransactionEvent]:
    t = unix_seconds(tx["event_timestamp"])
    return [
        TransactionEvent(r.transaction_id, int(r.customer_id), int(r.merchant_category), float(r.amount), float(t[i]))
        for i, r in enumerate(tx.itertuples(index=False))
    ]


def test_rows_in_batches_equal_the_batch_step_even_with_duplicates_and_late_events() -> None:
    """Fed in chunks, with every event of a chunk sent twice and one event held back until the next chunk (out of
    order), the last row pushed for each (customer, time) equals `customer_features` over all transactions."""
    tx = generate_transactions(GeneratorConfig(n_transactions=2_000, n_days=45, seed=3))
    events = events_of(tx)
    chunks = [events[i : i + 250] for i in range(0, len(events), 250)]
    late = chunks[1].pop(10)
    chunks[2].append(late)
    history = CustomerHistory()
    pushed = []
    for chunk in chunks:
        since, added = history.add(chunk + chunk)
        assert added == len(chunk)
        if late in chunk:  # the customer's rows from the late event on are recomputed
            assert since[late.customer_id] == late.event_unix_s
        pushed.append(history.rows(since))
    got = pd.concat(pushed).drop_duplicates(["customer_id", "event_timestamp"], keep="last")
    got = got.set_index(["customer_id", "event_timestamp"]).sort_index()
    truth = customer_features(tx).set_index(["customer_id", "event_timestamp"]).sort_index()
    assert got.index.equals(truth.index)
    for f in CUSTOMER_FEATURES:
        np.testing.assert_allclose(got[f].to_numpy(float), truth[f].to_numpy(float), rtol=0, atol=1e-9, err_msg=f)


def test_history_forgets_what_is_older_than_the_longest_window() -> None:
    history = CustomerHistory()
    day = 86_400.0
    history.add([TransactionEvent(f"r{i}", 1, 0, 1.0, i * day) for i in range(40)])
    assert len(history) == 40  # the rows of all 40 were computed from all of them
    history.add([TransactionEvent("r40", 1, 0, 1.0, 40 * day)])
    assert len(history) == 31  # days 10..40: within 30 days and a second of the new event


def test_the_processor_needs_brokers_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlplatform.errors import ConfigError

    monkeypatch.delenv("MLPLATFORM_STREAM_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    with pytest.raises(ConfigError, match="MLPLATFORM_STREAM_KAFKA_BOOTSTRAP_SERVERS is not set"):
        load_settings(StreamSettings)
    with pytest.raises(ConfigError, match="batch_size"):
        load_settings(StreamSettings, kafka_bootstrap_servers="k:9092", batch_size=0)
