"""Online equals offline through the endpoint (issue 15 item 3), on the real broker, Redis and PostgreSQL.

Two days of generated traffic, with their own timestamps, are sent through the local transformer and predictor
with publishing on while the stream feature processor runs; every answered request's customer-dependent features
(from the prediction log) are compared with `get_historical_features` for the same event
(`mlplatform.local.stream_replay`). The freshness lag is measured and reported here; its target (p99 under 1 s at
200 events/s) is checked by `make bench-streaming`, not by a timed test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import redis

from components.features.step import run_features
from components.train.step import run_train
from components.training_set.step import run_training_set
from mlplatform.data.generator import GeneratorConfig, generate_transactions
from mlplatform.features.stream import StreamSettings
from mlplatform.local.stream_replay import CUSTOMER_DEPENDENT, replay_through_endpoint
from mlplatform.settings import PlatformSettings
from mlplatform.training.loop import TrainConfig
from tests.integration.conftest import KAFKA_ADDR

pytestmark = pytest.mark.integration

REDIS_DB = int(os.environ.get("MLPLATFORM_TEST_STREAM_REDIS_DB", "10"))


@pytest.fixture
def feast_env(redis_info, fresh_postgres_db, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The Redis + PostgreSQL Feast configuration (as on a cluster), its variables set here and for the servers."""
    client = redis.Redis(host=redis_info.host, port=redis_info.port, db=REDIS_DB)
    client.flushdb()
    env = {
        "MLPLATFORM_FEAST_REDIS": f"{redis_info.address},db={REDIS_DB}",
        "MLPLATFORM_FEAST_REGISTRY": fresh_postgres_db.sqlalchemy_url,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield env
    client.flushdb()
    client.close()


def test_every_replayed_request_is_served_the_features_training_would_get(
    tmp_path: Path, feast_env: dict[str, str], kafka_prefix: str
) -> None:
    tx = generate_transactions(GeneratorConfig(n_transactions=8_000, n_days=40, seed=21))
    cutoff = tx["event_timestamp"].min() + pd.Timedelta(days=38)
    history, replay = tx[tx["event_timestamp"] < cutoff], tx[tx["event_timestamp"] >= cutoff]
    settings = PlatformSettings(work_dir=tmp_path / "work", feast_config_file="feature_store_redis_postgres.yaml")
    raw = tmp_path / "history.parquet"
    history.to_parquet(raw, index=False)
    run_features(raw, settings)
    splits = {n: tmp_path / f"{n}.parquet" for n in ("train", "validation", "test")}
    # Trained after a 30-day warm-up, as the replay is served: with every window full (the first month's partial
    # windows would be drift of their own, from the data's start, not from staleness).
    run_training_set(raw, settings, 2, 2, splits["train"], splits["validation"], splits["test"], warmup_days=30)
    run_train(splits["train"], splits["validation"], tmp_path / "model", TrainConfig(max_epochs=1), settings)
    stream = StreamSettings(
        kafka_bootstrap_servers=KAFKA_ADDR, kafka_topic_prefix=kafka_prefix, group_id="replay", batch_size=200, port=0
    )
    serving_env = {
        **feast_env,
        "MLPLATFORM_SERVING_MODEL_VERSION": "1",
        "MLPLATFORM_SERVING_FEAST_REPO_PATH": str(settings.feast_repo),
        "MLPLATFORM_SERVING_FEAST_CONFIG_FILE": settings.feast_config_file,
        "MLPLATFORM_SERVING_FEAST_DATA_DIR": str(settings.feast_data),
    }
    result = replay_through_endpoint(
        settings, stream, tmp_path / "model", history, replay, rate=25, work=tmp_path, serving_env=serving_env
    )
    print(result.as_dict())  # the figures, for whoever reads the test log
    assert result.requests == result.answered == len(replay), result.statuses
    assert result.compared == len(replay)
    # Nothing differs beyond the freshness lag. What the lag explains is counted: two days sent in seconds make a
    # customer's transactions follow each other within the lag far more often than in real time, yet most
    # requests are held to exact equality.
    assert result.mismatches == 0, result.mismatched_features
    assert result.compared - result.within_lag >= len(replay) // 2
    assert result.events_lost == 0 and result.duplicates == 0
    assert result.freshness_lag_p50_s is not None and result.freshness_lag_p99_s is not None
    # The monitor sees no drift of the customer features on undrifted traffic served fresh features: each PSI is
    # below the MlplatformFeatureDrift threshold (0.25); stale customer features gave log_seconds_since_last 2.4.
    # The merchant features are daily snapshots that the stream does not change; their PSI here reflects a
    # training window of 4 days over few merchants (reported by the benchmark, not asserted).
    fresh = {f: v for f, v in result.feature_psi_fresh.items() if f in CUSTOMER_DEPENDENT}
    assert set(fresh) == set(CUSTOMER_DEPENDENT)
    assert max(fresh.values()) < 0.25, fresh
