"""The stream feature processor against the real Kafka broker and a real Feast store (SQLite online, DuckDB offline).

Generated transactions are published as the transformer publishes them (keyed by customer, JSON with the schema
version); the processor consumes them as a consumer group and pushes through the Feast push source. What it
writes is compared with `compute.customer_features` over the same transactions, the batch features step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Consumer, Producer

from components.features.step import run_features
from mlplatform.events import DEAD_LETTER, SCHEMA_VERSION, TRANSACTIONS
from mlplatform.features.compute import CUSTOMER_FEATURES, customer_features
from mlplatform.features.store import open_store, source_dir
from mlplatform.features.stream import FeastSink, StreamFeatureProcessor, StreamSettings, group_lag
from mlplatform.features.stream_events import backfill
from mlplatform.settings import PlatformSettings
from tests.integration.conftest import KAFKA_ADDR, WAIT_SECONDS, free_port

pytestmark = pytest.mark.integration

PARTITIONS = TRANSACTIONS.partitions


@pytest.fixture(scope="module")
def prepared_small(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    """3,000 generated transactions over 12 days; the raw snapshot of the first 8 days as the pipeline left it."""
    from mlplatform.data.generator import GeneratorConfig, generate_transactions

    tx = generate_transactions(GeneratorConfig(n_transactions=3_000, n_days=12, seed=11))
    work = tmp_path_factory.mktemp("stream-raw")
    raw = work / "history.parquet"
    cutoff = tx["event_timestamp"].min() + pd.Timedelta(days=8)
    tx[tx["event_timestamp"] < cutoff].to_parquet(raw, index=False)
    return tx, raw


def feature_store(tmp_path: Path, raw: Path) -> PlatformSettings:
    """A work dir whose Feast store the features step built from the history (sources, apply, materialize)."""
    settings = PlatformSettings(work_dir=tmp_path / "work")
    run_features(raw, settings)
    return settings


def publish(prefix: str, tx: pd.DataFrame, extra: list[tuple[bytes, bytes]] = ()) -> None:
    """The transactions as the transformer publishes them (`stream.backfill`), then `extra` (key, raw value)."""
    backfill(tx, settings_for(prefix, "unused"))
    if extra:
        producer = Producer({"bootstrap.servers": KAFKA_ADDR})
        for key, raw in extra:
            producer.produce(prefix + TRANSACTIONS.name, raw, key)
        assert producer.flush(WAIT_SECONDS) == 0


def settings_for(prefix: str, group: str, batch_size: int = 500) -> StreamSettings:
    return StreamSettings(
        kafka_bootstrap_servers=KAFKA_ADDR,
        kafka_topic_prefix=prefix,
        group_id=group,
        batch_size=batch_size,
        port=0,
    )


def run_until(processor: StreamFeatureProcessor, done: Callable[[], bool]) -> None:
    """Run the processor on a thread until `done()` holds (or the wait runs out), then stop it."""
    thread = threading.Thread(target=processor.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        while not done():
            assert thread.is_alive(), "the processor stopped by itself"
            assert time.monotonic() < deadline, "the processor did not get through the topic in time"
            time.sleep(0.1)
    finally:
        processor.stop_event.set()
        thread.join(timeout=30)


def counted(processor: StreamFeatureProcessor, outcome: str) -> float:
    return processor.registry.get_sample_value("mlplatform_stream_events_total", {"outcome": outcome}) or 0.0


def online_rows(settings: PlatformSettings, customers: list[int]) -> pd.DataFrame:
    store = open_store(settings.feast_repo, settings.feast_data, settings.feast_config_file)
    got = store.get_online_features(
        features=[f"customer_stats:{f}" for f in CUSTOMER_FEATURES],
        entity_rows=[{"customer_id": c} for c in customers],
    ).to_df()
    return got.set_index("customer_id").loc[customers]


def assert_online_equals_batch(settings: PlatformSettings, tx: pd.DataFrame) -> None:
    """Every customer's online row equals the batch step's latest row for them, within 1e-6."""
    truth = customer_features(tx).groupby("customer_id").last()
    customers = [int(c) for c in truth.index]
    got = online_rows(settings, customers)
    for f in CUSTOMER_FEATURES:
        np.testing.assert_allclose(
            got[f].to_numpy(np.float64), truth.loc[customers, f].to_numpy(np.float64), rtol=0, atol=1e-6, err_msg=f
        )


def test_processor_pushes_the_batch_steps_rows_to_the_offline_and_online_store_and_dead_letters_poison(
    prepared_small: tuple[pd.DataFrame, Path], tmp_path: Path, kafka_prefix: str
) -> None:
    tx, raw = prepared_small
    settings = feature_store(tmp_path, raw)
    topic, dead = kafka_prefix + TRANSACTIONS.name, kafka_prefix + DEAD_LETTER.name
    poison = [
        (b"1", b"not json"),
        (b"2", json.dumps({"record_id": "x", "customer_id": 2, "amount": 1.0, "event_unix_s": 1.0}).encode()),
        (b"3", json.dumps({"schema_version": SCHEMA_VERSION, "record_id": "y", "customer_id": "three"}).encode()),
    ]
    # Half, the poison, then the rest: the consumer goes on past the bad messages.
    half = len(tx) // 2
    publish(kafka_prefix, tx.iloc[:half], poison)
    publish(kafka_prefix, tx.iloc[half:])
    store = open_store(settings.feast_repo, settings.feast_data, settings.feast_config_file)
    processor = StreamFeatureProcessor(settings_for(kafka_prefix, "g1"), FeastSink(store))
    run_until(processor, lambda: counted(processor, "pushed") + counted(processor, "dead_letter") >= len(tx) + 3)
    assert counted(processor, "pushed") == len(tx)
    assert counted(processor, "dead_letter") == 3
    assert processor.registry.get_sample_value("mlplatform_stream_push_errors_total") == 0

    # Offline: every row of the batch step over all transactions is in the customer source, with its values.
    truth = customer_features(tx).set_index(["customer_id", "event_timestamp"]).sort_index()
    offline = pd.read_parquet(source_dir(settings.feast_data) / "customer_stats.parquet")
    offline = offline.set_index(["customer_id", "event_timestamp"]).sort_index()
    assert set(truth.index) <= set(offline.index)
    got = offline.loc[truth.index]
    for f in CUSTOMER_FEATURES:
        # Duplicates (the history's batch rows and the pushed ones) must agree with the truth, each of them.
        np.testing.assert_allclose(
            got[f].to_numpy(np.float64),
            truth[f].reindex(got.index).to_numpy(np.float64),
            rtol=0,
            atol=1e-6,
            err_msg=f,
        )
    assert_online_equals_batch(settings, tx)

    # The dead letters: the original bytes, with where they came from and why.
    consumer = Consumer({"bootstrap.servers": KAFKA_ADDR, "group.id": "dl-reader", "auto.offset.reset": "earliest"})
    consumer.subscribe([dead])
    letters = []
    deadline = time.monotonic() + WAIT_SECONDS
    while len(letters) < 3 and time.monotonic() < deadline:
        m = consumer.poll(1.0)
        if m is not None and m.error() is None:
            letters.append(m)
    consumer.close()
    assert sorted(m.value() for m in letters) == sorted(v for _, v in poison)
    headers = [dict(m.headers()) for m in letters]
    assert all(h["mlplatform.topic"] == topic.encode() for h in headers)
    reasons = sorted(h["mlplatform.error"].decode() for h in headers)
    assert any("not JSON" in r for r in reasons)
    assert any("schema_version None" in r for r in reasons)
    assert any("customer_id must be an integer" in r for r in reasons)


def test_a_second_group_replaying_the_topic_pushes_the_same_rows(
    prepared_small: tuple[pd.DataFrame, Path], tmp_path: Path, kafka_prefix: str
) -> None:
    """Replaying a partition is idempotent: duplicates of events are skipped, rows pushed again are the same."""
    tx, raw = prepared_small
    settings = feature_store(tmp_path, raw)
    # Every event twice (a transformer's spool replayed after a restart): the duplicates change nothing.
    publish(kafka_prefix, tx)
    publish(kafka_prefix, tx.iloc[: len(tx) // 3])
    store = open_store(settings.feast_repo, settings.feast_data, settings.feast_config_file)
    pushes: list[pd.DataFrame] = []

    class Recording(FeastSink):
        def push(self, rows: pd.DataFrame) -> None:
            pushes.append(rows.copy())
            super().push(rows)

    total = len(tx) + len(tx) // 3
    for group in ("first", "replay"):
        pushes.clear()
        p = StreamFeatureProcessor(settings_for(kafka_prefix, group), Recording(store))
        run_until(p, lambda p=p: counted(p, "pushed") + counted(p, "duplicate") >= total)
        assert counted(p, "pushed") == len(tx)
        assert counted(p, "duplicate") == len(tx) // 3
        rows = pd.concat(pushes).drop_duplicates(["customer_id", "event_timestamp"], keep="last")
        if group == "first":
            first = rows.set_index(["customer_id", "event_timestamp"]).sort_index()
    replay = rows.set_index(["customer_id", "event_timestamp"]).sort_index()
    pd.testing.assert_frame_equal(first, replay)
    assert_online_equals_batch(settings, tx)


def test_a_processor_killed_mid_stream_resumes_from_committed_offsets_and_ends_identical(
    prepared_small: tuple[pd.DataFrame, Path], tmp_path: Path, kafka_prefix: str
) -> None:
    """`mlplatform features stream` killed with SIGKILL after some batches; a new one finishes the topic."""
    tx, raw = prepared_small
    settings = feature_store(tmp_path, raw)
    publish(kafka_prefix, tx)
    env = {
        **os.environ,
        "MLPLATFORM_WORK_DIR": str(settings.resolved_work_dir),
        "MLPLATFORM_STREAM_KAFKA_BOOTSTRAP_SERVERS": KAFKA_ADDR,
        "MLPLATFORM_STREAM_KAFKA_TOPIC_PREFIX": kafka_prefix,
        "MLPLATFORM_STREAM_GROUP_ID": "killed",
        "MLPLATFORM_STREAM_BATCH_SIZE": "50",
        "MLPLATFORM_STREAM_SESSION_TIMEOUT_SECONDS": "6",  # the killed member's partitions move on sooner
    }

    def start() -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlplatform.cli", "features", "stream", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return proc, port

    def pushed(port: int) -> float:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return 0.0
        lines = [x for x in text.splitlines() if x.startswith('mlplatform_stream_events_total{outcome="pushed"}')]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    proc, port = start()
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        while pushed(port) < 300:  # some batches committed, most of the topic still ahead
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "the processor pushed nothing in time"
            time.sleep(0.05)
        first_run = pushed(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert first_run < len(tx), "killed too late to show anything: the first run finished the topic"

    proc, port = start()
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        # The second run processes what was not committed: the rest of the topic and the killed run's last batch.
        while group_lag(settings_for(kafka_prefix, "killed")) > 0:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "the restarted processor did not finish the topic in time"
            time.sleep(0.1)
        second_run = pushed(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
    # Resumed, not restarted: the second run did not push the committed part again.
    assert second_run <= len(tx) - first_run + 50 * PARTITIONS, (first_run, second_run)
    assert_online_equals_batch(settings, tx)


def test_a_second_processor_joining_the_group_takes_partitions_and_the_result_is_the_same(
    prepared_small: tuple[pd.DataFrame, Path], tmp_path: Path, kafka_prefix: str
) -> None:
    """Scaling out by partitions: a second member joins mid-stream, the group rebalances (the partitions it is given
    are rebuilt from the topic), both push, and the online store ends equal to the batch step."""
    tx, raw = prepared_small
    settings = feature_store(tmp_path, raw)
    publish(kafka_prefix, tx)
    store = open_store(settings.feast_repo, settings.feast_data, settings.feast_config_file)

    class Slow(FeastSink):  # a push of 0.1 s: the first member cannot finish the topic before the second joins
        def push(self, rows: pd.DataFrame) -> None:
            time.sleep(0.1)
            super().push(rows)

    first = StreamFeatureProcessor(settings_for(kafka_prefix, "scaled", batch_size=50), Slow(store))
    second = StreamFeatureProcessor(settings_for(kafka_prefix, "scaled", batch_size=50), Slow(store))
    threads = [threading.Thread(target=p.run, daemon=True) for p in (first, second)]
    threads[0].start()
    deadline = time.monotonic() + WAIT_SECONDS
    while counted(first, "pushed") < 200:
        assert time.monotonic() < deadline, "the first processor pushed nothing in time"
        time.sleep(0.05)
    threads[1].start()
    try:
        while group_lag(settings_for(kafka_prefix, "scaled")) > 0 or counted(second, "pushed") == 0:
            assert time.monotonic() < deadline + WAIT_SECONDS, "the group did not finish the topic in time"
            time.sleep(0.1)
    finally:
        for p in (first, second):
            p.stop_event.set()
        for t in threads:
            t.join(timeout=30)
    assert counted(second, "pushed") > 0 and counted(first, "pushed") < len(tx)
    assert counted(first, "pushed") + counted(second, "pushed") >= len(tx)
    assert_online_equals_batch(settings, tx)


def test_a_failing_push_is_retried_and_nothing_is_committed_until_it_succeeds(
    prepared_small: tuple[pd.DataFrame, Path], tmp_path: Path, kafka_prefix: str
) -> None:
    """The Feast store down (a push raising): the batch is retried, counted, and its offsets stay uncommitted (the
    group's lag does not move) until the push succeeds; then everything is committed and online."""
    tx, raw = prepared_small
    settings = feature_store(tmp_path, raw)
    publish(kafka_prefix, tx)
    store = open_store(settings.feast_repo, settings.feast_data, settings.feast_config_file)
    down = threading.Event()
    down.set()

    class Flaky(FeastSink):
        def push(self, rows: pd.DataFrame) -> None:
            if down.is_set():
                raise ConnectionError("online store unreachable")
            super().push(rows)

    stream = StreamSettings(
        kafka_bootstrap_servers=KAFKA_ADDR,
        kafka_topic_prefix=kafka_prefix,
        group_id="flaky",
        push_retry_seconds=0.1,
        port=0,
    )
    processor = StreamFeatureProcessor(stream, Flaky(store))
    thread = threading.Thread(target=processor.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while (processor.registry.get_sample_value("mlplatform_stream_push_errors_total") or 0) < 3:
            assert time.monotonic() < deadline, "the processor never tried to push"
            time.sleep(0.05)
        assert group_lag(stream) == len(tx)  # nothing committed while the store is down
        assert counted(processor, "pushed") == 0
        down.clear()
        while group_lag(stream) > 0:
            assert time.monotonic() < deadline + WAIT_SECONDS, "the processor did not recover"
            time.sleep(0.1)
    finally:
        processor.stop_event.set()
        thread.join(timeout=30)
    assert counted(processor, "pushed") == len(tx)
    assert_online_equals_batch(settings, tx)


def test_features_backfill_publishes_history_and_names_bad_input(
    prepared_small: tuple[pd.DataFrame, Path], tmp_path: Path, kafka_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mlplatform features backfill`: the raw snapshot into the transactions topic (what a new stream starts from);
    a missing file or a frame without the needed columns is refused with what is wrong."""
    from typer.testing import CliRunner

    from mlplatform.cli import app

    tx, raw = prepared_small
    monkeypatch.setenv("MLPLATFORM_STREAM_KAFKA_TOPIC_PREFIX", kafka_prefix)
    runner = CliRunner()
    result = runner.invoke(app, ["features", "backfill", "--transactions", str(raw), "--bootstrap-servers", KAFKA_ADDR])
    assert result.exit_code == 0, result.output
    history = pd.read_parquet(raw)
    assert json.loads(result.output)["published"] == len(history)
    assert group_lag(settings_for(kafka_prefix, "new-group")) == len(history)  # all of it, for a group's first read

    monkeypatch.setenv("MLPLATFORM_STREAM_KAFKA_BOOTSTRAP_SERVERS", KAFKA_ADDR)  # the brokers from the environment
    missing = runner.invoke(app, ["features", "backfill", "--transactions", str(tmp_path / "none.parquet")])
    assert missing.exit_code != 0 and "does not exist" in " ".join(missing.output.split())
    partial = tmp_path / "partial.parquet"
    history.drop(columns=["merchant_category"]).to_parquet(partial)
    refused = runner.invoke(app, ["features", "backfill", "--transactions", str(partial)])
    assert refused.exit_code != 0 and "merchant_category" in " ".join(refused.output.split())
