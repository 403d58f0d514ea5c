"""The features step with the shared-infrastructure Feast configuration: Redis online store,
PostgreSQL SQL registry (feature_repo/feature_store_redis_postgres.yaml), against real services."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pytest
import redis

from components.features.step import FeaturesResult, run_features
from components.ingest.step import run_ingest
from mlplatform.errors import ConfigError
from mlplatform.features import store as featurestore
from mlplatform.features.compute import (
    MODEL_CUSTOMER_FEATURES,
    MODEL_MERCHANT_FEATURES,
    ON_DEMAND_FEATURES,
    customer_features,
)
from mlplatform.features.online import OnlineReader
from mlplatform.settings import PlatformSettings
from serving.transformer import FEATURE_REFS

pytestmark = pytest.mark.integration

CONFIG_FILE = "feature_store_redis_postgres.yaml"
#: The Redis database index these tests own (flushed before and after).
REDIS_DB = int(os.environ.get("MLPLATFORM_TEST_REDIS_DB", "11"))


@dataclass
class RedisPgStore:
    settings: PlatformSettings
    raw: pd.DataFrame
    result: FeaturesResult
    db: Any  # conftest.PostgresDb
    redis: redis.Redis


@pytest.fixture
def redis_db(redis_info) -> Iterator[redis.Redis]:
    """The dedicated Redis database index, empty at the start and flushed at the end."""
    client = redis.Redis(host=redis_info.host, port=redis_info.port, db=REDIS_DB)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def redis_pg_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_info, redis_db: redis.Redis, fresh_postgres_db
) -> RedisPgStore:
    """The real ingest and features steps with the Redis + PostgreSQL Feast configuration."""
    monkeypatch.setenv("MLPLATFORM_FEAST_REDIS", f"{redis_info.address},db={REDIS_DB}")
    monkeypatch.setenv("MLPLATFORM_FEAST_REGISTRY", fresh_postgres_db.sqlalchemy_url)
    settings = PlatformSettings(work_dir=tmp_path, feast_config_file=CONFIG_FILE)
    raw_path = tmp_path / "raw.parquet"
    run_ingest(raw_path, n_transactions=5000, n_days=30)
    result = run_features(raw_path, settings)
    return RedisPgStore(settings, pd.read_parquet(raw_path), result, fresh_postgres_db, redis_db)


def _open(settings: PlatformSettings):
    return featurestore.open_store(settings.feast_repo, settings.feast_data, CONFIG_FILE)


def test_features_step_fills_postgres_registry_and_redis(redis_pg_store: RedisPgStore) -> None:
    s = redis_pg_store
    assert s.result.customer_rows == len(s.raw)
    assert {"customer_stats", "merchant_stats", "transaction_features", "fraud_model_v1"} <= set(s.result.applied)
    assert set(s.result.versions) >= {"customer_stats", "merchant_stats", "fraud_model_v1"}

    # The registry lives in the fresh PostgreSQL database, not in a file of the work dir.
    with psycopg.connect(s.db.libpq_url) as conn:
        tables = {
            r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        }
        assert {"feature_views", "entities", "feature_services", "on_demand_feature_views"} <= tables, tables
        views = {r[0] for r in conn.execute("SELECT feature_view_name FROM feature_views WHERE project_id = 'fraud'")}
    assert views == {"customer_stats", "merchant_stats"}
    assert not (s.settings.feast_data / "registry.db").exists()

    # A new store opened from the configuration reads the same registry.
    store = _open(s.settings)
    assert {fv.name for fv in store.list_feature_views()} == {"customer_stats", "merchant_stats"}
    service = store.get_feature_service("fraud_model_v1")
    projected = {f.name for p in service.feature_view_projections for f in p.features}
    assert projected == {*ON_DEMAND_FEATURES, *MODEL_CUSTOMER_FEATURES, *MODEL_MERCHANT_FEATURES}

    # Materialization wrote into the dedicated Redis database.
    assert s.redis.dbsize() > 0


def test_online_features_through_service_are_latest_materialized(redis_pg_store: RedisPgStore) -> None:
    s = redis_pg_store
    cust = customer_features(s.raw)
    # The busiest customer, and a merchant it bought from.
    customer_id = int(s.raw["customer_id"].value_counts().idxmax())
    expected = cust[cust["customer_id"] == customer_id].sort_values("event_timestamp").iloc[-1]
    # The customer of the newest row: materialization must include the end of its window.
    newest = cust.sort_values("event_timestamp").iloc[-1]
    last_customer = int(newest["customer_id"])
    expected_last = newest
    merchant_id = int(s.raw.loc[s.raw["customer_id"] == customer_id, "merchant_id"].iloc[-1])

    store = _open(s.settings)
    service = store.get_feature_service("fraud_model_v1")
    rows = [
        {"customer_id": customer_id, "merchant_id": merchant_id, "amount": 42.0, "event_unix_s": 1.7e9},
        {"customer_id": 10**9, "merchant_id": merchant_id, "amount": 42.0, "event_unix_s": 1.7e9},
        {"customer_id": last_customer, "merchant_id": merchant_id, "amount": 42.0, "event_unix_s": 1.7e9},
    ]
    out = store.get_online_features(features=service, entity_rows=rows).to_dict()

    known, unknown, last = 0, 1, 2
    assert out["cust_txn_count_7d"][known] == int(expected["cust_txn_count_7d"])
    assert out["cust_amount_avg_30d"][known] == pytest.approx(float(expected["cust_amount_avg_30d"]), rel=1e-9)
    assert out["cust_txn_count_7d"][last] == int(expected_last["cust_txn_count_7d"])
    assert out["cust_amount_avg_30d"][last] == pytest.approx(float(expected_last["cust_amount_avg_30d"]), rel=1e-9)
    assert out["merchant_amount_avg_30d"][known] is not None and out["merchant_fraud_rate_30d"][known] is not None
    for name in MODEL_CUSTOMER_FEATURES:
        assert out[name][unknown] is None, f"{name} of an unknown customer should be missing, got {out[name][unknown]}"
    for name in ON_DEMAND_FEATURES:
        for i in (known, unknown):
            assert out[name][i] is not None and math.isfinite(out[name][i]), f"{name}[{i}] = {out[name][i]}"


def test_missing_env_var_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLPLATFORM_FEAST_REDIS", raising=False)
    monkeypatch.setenv("MLPLATFORM_FEAST_REGISTRY", "postgresql+psycopg://postgres@127.0.0.1:1/unused")
    settings = PlatformSettings(work_dir=tmp_path, feast_config_file=CONFIG_FILE)
    with pytest.raises(ConfigError, match="MLPLATFORM_FEAST_REDIS"):
        featurestore.open_store(settings.feast_repo, settings.feast_data, CONFIG_FILE)


def _same(a: object, b: object) -> bool:
    """Equal values of the same type (an int where Feast gives a float, or the reverse, is a difference)."""
    if type(a) is not type(b):
        return False
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def test_the_lean_online_read_equals_feasts_value_by_value(redis_pg_store: RedisPgStore, prepared) -> None:
    """The serving path's read of Redis (mlplatform/features/online.py) against Feast's own online read: every
    feature the transformer requests, for known and unknown customers and merchants, single and batched, repeated
    entities; a store that is not plain Redis (the embedded SQLite one) is read by Feast."""
    s = redis_pg_store
    store = _open(s.settings)
    store.refresh_registry()
    lean, generic = OnlineReader(store, FEATURE_REFS), OnlineReader(store, FEATURE_REFS, lean=False)
    assert lean.lean and not generic.lean
    pairs = s.raw[["customer_id", "merchant_id"]].drop_duplicates().sample(60, random_state=3).astype(int)
    known = [{"customer_id": c, "merchant_id": m} for c, m in pairs.itertuples(index=False)]
    unknown = [{"customer_id": 10**9 + i, "merchant_id": 10**9 + i} for i in range(3)]
    batches = [[r] for r in known[:40]] + [known[40:50] + unknown, known[50:] + known[50:52], unknown[:1]]

    async def both() -> list[tuple[dict[str, list[Any]], dict[str, list[Any]]]]:  # one loop: the clients keep theirs
        return [(await generic.read(rows), await lean.read(rows)) for rows in batches]

    seen: set[str] = set()
    for rows, (expected, got) in zip(batches, asyncio.run(both()), strict=True):
        for ref in FEATURE_REFS:
            name = ref.partition(":")[2]
            assert len(got[name]) == len(rows)
            mismatched = [(e, g) for e, g in zip(expected[name], got[name], strict=True) if not _same(e, g)]
            assert not mismatched, f"{name}: Feast read {mismatched[0][0]!r}, the lean read {mismatched[0][1]!r}"
            seen.update("none" if v is None else "value" for v in got[name])
    assert seen == {"none", "value"}  # both hits and misses were compared

    embedded = featurestore.open_store(prepared.settings.feast_repo, prepared.settings.feast_data)
    sqlite = OnlineReader(embedded, FEATURE_REFS)
    assert not sqlite.lean
    one = prepared.frame("test").iloc[0]
    row = {"customer_id": int(one["customer_id"]), "merchant_id": int(one["merchant_id"])}
    assert set(asyncio.run(sqlite.read([row]))) >= {ref.partition(":")[2] for ref in FEATURE_REFS}
