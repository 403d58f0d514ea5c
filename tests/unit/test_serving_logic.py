"""Serving logic without servers: request validation, feature assembly, post-assertion, prediction log."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry
from safetensors.torch import load_file, save_file

from mlplatform.features.compute import MODEL_FEATURES, model_input, on_demand_features
from mlplatform.monitoring.prediction_log import PredictionLog, read_records
from mlplatform.training.model import WEIGHTS_FILE, ModelConfig, build_model, save_model
from serving.errors import InvalidRequest
from serving.metrics import ServingMetrics
from serving.predictor import FraudPredictor, fallback_score
from serving.schema import Transaction, parse_v1, parse_v2_columns
from serving.settings import ServingSettings
from serving.transformer import FraudTransformer, assemble_features

GOOD = {"customer_id": 7, "merchant_id": 3, "amount": 12.5, "timestamp": "2026-02-10T00:10:00Z"}


def _body(**overrides: object) -> dict[str, object]:
    tx = {**GOOD, **overrides}
    return {"instances": [{k: v for k, v in tx.items() if v is not ...}]}


def test_valid_transaction_is_parsed_with_unix_seconds() -> None:
    [tx] = parse_v1(_body(transaction_id="t-1"), 10, 1e6)
    assert tx == Transaction(7, 3, 12.5, 1770682200.0, "t-1")
    [tx] = parse_v1(_body(timestamp=1770682200), 10, 1e6)
    assert tx.event_unix_s == 1770682200.0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"instances": "x"}, "instances"),
        ({"instances": []}, "instances"),
        ({"instances": [GOOD] * 11}, "instances"),
        ({"instances": [GOOD], "extra": 1}, "extra"),
        ({"instances": [1]}, "instances[0]"),
        (_body(customer_id=...), "instances[0].customer_id"),
        (_body(customer_id="7"), "instances[0].customer_id"),
        (_body(customer_id=True), "instances[0].customer_id"),
        (_body(customer_id=-1), "instances[0].customer_id"),
        (_body(merchant_id=2**64), "instances[0].merchant_id"),
        (_body(amount="12"), "instances[0].amount"),
        (_body(amount=float("nan")), "instances[0].amount"),
        (_body(amount=float("inf")), "instances[0].amount"),
        (_body(amount=-5), "instances[0].amount"),
        (_body(amount=0), "instances[0].amount"),
        (_body(amount=1e12), "instances[0].amount"),
        (_body(timestamp="yesterday"), "instances[0].timestamp"),
        (_body(timestamp="2026-02-10T00:10:00"), "instances[0].timestamp"),
        (_body(timestamp=1e15), "instances[0].timestamp"),
        (_body(timestamp=None), "instances[0].timestamp"),
        (_body(transaction_id="a b"), "instances[0].transaction_id"),
        (_body(channel="web"), "instances[0].channel"),
    ],
)
def test_bad_request_is_rejected_naming_the_field(body: object, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_v1(body, 10, 1e6)
    assert info.value.field == field


def test_v2_columns_are_validated_like_v1() -> None:
    cols = {"customer_id": [7, 8], "merchant_id": [3, 3], "amount": [1.0, 2.0], "timestamp": [1770682200.0] * 2}
    assert [t.customer_id for t in parse_v2_columns(cols, 10, 1e6)] == [7, 8]
    with pytest.raises(InvalidRequest, match="inputs.amount"):
        parse_v2_columns({**cols, "amount": [1.0]}, 10, 1e6)
    with pytest.raises(InvalidRequest, match="inputs.timestamp"):
        parse_v2_columns({k: v for k, v in cols.items() if k != "timestamp"}, 10, 1e6)


def test_online_assembly_matches_the_offline_feature_code(prepared) -> None:
    frame = prepared.frame("test").head(300).reset_index(drop=True)
    frame.loc[::7, "cust_amount_avg_30d"] = np.nan  # unknown customers too
    txs = [
        Transaction(int(r.customer_id), int(r.merchant_id), float(r.amount), float(r.event_unix_s))
        for r in frame.itertuples()
    ]
    online = {c: [None if pd.isna(v) else v for v in frame[c]] for c in frame.columns}
    cols = assemble_features(txs, online)
    offline = frame.copy()
    offline[list(on_demand_features(frame).columns)] = on_demand_features(frame)
    from mlplatform.features.compute import model_input_arrays

    np.testing.assert_array_equal(model_input_arrays(cols), model_input(offline))


def test_store_failure_assembles_default_features() -> None:
    cols = assemble_features([Transaction(1, 2, 50.0, 1770682200.0)], None)
    from mlplatform.features.compute import FEATURE_DEFAULTS, model_input_arrays

    row = dict(zip(MODEL_FEATURES, model_input_arrays(cols)[0], strict=True))
    assert row["merchant_fraud_rate_30d"] == pytest.approx(FEATURE_DEFAULTS["merchant_fraud_rate_30d"])
    assert all(math.isfinite(v) for v in row.values())


def test_fallback_score_is_finite_and_bounded() -> None:
    rows = np.zeros((3, len(MODEL_FEATURES)), np.float32)
    idx = list(MODEL_FEATURES)
    rows[0, idx.index("merchant_fraud_rate_30d")] = 0.2
    rows[1, idx.index("amount_zscore_30d")] = 10.0
    rows[2, idx.index("merchant_fraud_rate_30d")] = np.nan
    scores = fallback_score(rows, idx)
    assert scores.tolist() == pytest.approx([0.2, 0.25, 0.0])


def _artifact(tmp_path: Path, poison: bool) -> Path:
    config = ModelConfig(feature_names=list(MODEL_FEATURES), hidden_units=[8])
    model = build_model(config)
    out = save_model(model, config, tmp_path / "model")
    if poison:
        state = load_file(str(out / WEIGHTS_FILE))
        last_bias = [k for k in state if k.endswith("bias")][-1]
        state[last_bias][:] = float("nan")
        save_file(state, str(out / WEIGHTS_FILE))
    return out


def test_predictor_replaces_non_finite_output_with_the_fallback_and_counts_it(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    settings = ServingSettings(model_version="3")
    metrics = ServingMetrics("fraud-detector", "3", "stable", "predictor", registry)
    predictor = FraudPredictor("fraud-detector", _artifact(tmp_path, poison=True), settings, metrics)
    predictor.load()
    out = predictor.predict({"instances": np.ones((4, len(MODEL_FEATURES))).tolist()})
    assert out["fallback"] == [True] * 4
    assert all(0.0 <= s <= 1.0 for s in out["predictions"])
    labels = {"model_name": "fraud-detector", "model_version": "3", "role": "stable", "component": "predictor"}
    count = registry.get_sample_value("mlplatform_prediction_fallbacks_total", {**labels, "reason": "non_finite"})
    assert count == 4


def test_predictor_rejects_malformed_rows(tmp_path: Path) -> None:
    metrics = ServingMetrics("m", "1", "stable", "predictor", CollectorRegistry())
    predictor = FraudPredictor("m", _artifact(tmp_path, poison=False), ServingSettings(), metrics)
    predictor.load()
    n = len(MODEL_FEATURES)
    for bad in ({"instances": [[1.0] * (n - 1)]}, {"instances": []}, {"instances": [["a"] * n]}, {"rows": []}):
        with pytest.raises(InvalidRequest):
            predictor.predict(bad)
    healthy = predictor.predict({"instances": [[1.0] * n]})
    assert healthy["fallback"] == [False]


def test_prediction_log_keeps_every_record_across_rotation_and_close(tmp_path: Path) -> None:
    written: list[int] = []
    log = PredictionLog(tmp_path, max_bytes=2048, flush_seconds=0.01, on_written=written.append).start()

    def writer(k: int) -> None:
        for i in range(200):
            log.append([{"record_id": f"{k}-{i}", "score": 0.5}])

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    log.append([{"record_id": "late", "score": 0.1}])  # after close: written synchronously
    ids = [r["record_id"] for r in read_records(tmp_path)]
    assert len(ids) == len(set(ids)) == 801
    assert len(list(tmp_path.glob("predictions-*.jsonl"))) > 1  # rotated by size
    assert sum(written) == 801


def test_prediction_log_retries_records_after_a_write_failure(tmp_path: Path) -> None:
    target = tmp_path / "log"
    errors: list[Exception] = []
    log = PredictionLog(target, flush_seconds=60, on_error=errors.append)
    target.write_text("a file where the folder should be")
    log.append([{"record_id": "a"}])
    assert log.flush() == 0 and errors and log.pending == 1
    target.unlink()
    assert log.flush() == 1
    log.close()
    assert [r["record_id"] for r in read_records(target)] == ["a"]


def test_transformer_logs_and_answers_the_version_and_role_of_the_predictor_that_scored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster one transformer (version "shared") fronts the stable and the canary predictor revisions:
    each record names the revision that answered, so prediction logs split by version and role."""
    settings = ServingSettings(model_version="shared", role="stable")
    metrics = ServingMetrics("fraud-detector", "shared", "stable", "transformer", CollectorRegistry())
    transformer = FraudTransformer("fraud-detector", settings, store=object(), metrics=metrics)
    transformer.log = PredictionLog(tmp_path, flush_seconds=0.01).start()

    async def no_features(transactions: list[Transaction]) -> tuple[None, bool]:
        return None, True

    async def canary_predictor(body: bytes, headers: dict[str, str]) -> dict[str, object]:
        return {"predictions": [0.9], "fallback": [False], "model_version": "4", "role": "canary", "threshold": 0.5}

    monkeypatch.setattr(transformer, "_online_features", no_features)  # no feature store in a unit test
    monkeypatch.setattr(transformer, "_call_predictor", canary_predictor)  # the canary revision's answer

    async def serve() -> dict[str, object]:
        scoring = await transformer.preprocess(_body())
        return transformer.postprocess(await transformer.predict(scoring))

    answer = asyncio.run(serve())
    transformer.log.close()
    assert (answer["model_version"], answer["role"]) == ("4", "canary")
    [record] = list(read_records(tmp_path))
    assert (record["model_version"], record["role"]) == ("4", "canary")


def test_publishing_events_needs_a_spool_folder_named_in_the_error(tmp_path: Path) -> None:
    """Kafka without a spool folder would have nowhere to keep events while the broker is away: refused at start."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="MLPLATFORM_SERVING_EVENT_SPOOL_DIR"):
        ServingSettings(kafka_bootstrap_servers="kafka:9092")
    settings = ServingSettings(kafka_bootstrap_servers="kafka:9092", event_spool_dir=tmp_path)
    assert settings.event_spool_dir == tmp_path
    assert ServingSettings().kafka_bootstrap_servers is None  # nothing is published unless configured


def test_kafka_tls_and_sasl_settings_become_the_clients_and_sasl_needs_credentials(tmp_path: Path) -> None:
    base = {"kafka_bootstrap_servers": "kafka:9093", "event_spool_dir": tmp_path}
    assert ServingSettings(**base).kafka_client_config() == {"security.protocol": "PLAINTEXT"}
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="MLPLATFORM_SERVING_KAFKA_SASL_USERNAME"):
        ServingSettings(**base, kafka_security_protocol="SASL_SSL")
    settings = ServingSettings(
        **base,
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_ca_location=tmp_path / "ca.crt",
        kafka_sasl_username="mlplatform-serving",
        kafka_sasl_password="s3cret",
    )
    assert settings.kafka_client_config() == {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(tmp_path / "ca.crt"),
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "mlplatform-serving",
        "sasl.password": "s3cret",
    }


@pytest.mark.parametrize(("kind", "loop_class"), [("uvloop", "uvloop.Loop"), ("asyncio", "asyncio.unix_events")])
def test_a_serving_process_runs_on_the_event_loop_its_settings_name(kind: str, loop_class: str) -> None:
    """uvloop by default (ServingSettings.event_loop), Python's loop on request; both the loop KServe configures before
    it starts and the one it serves in. In a child process: the policy is process-wide."""
    code = (
        "import asyncio\n"
        "from serving.app import use_event_loop\n"
        "from serving.settings import ServingSettings\n"
        "use_event_loop(ServingSettings().event_loop)\n"
        "async def running(): return asyncio.get_running_loop()\n"
        "for loop in (asyncio.get_event_loop(), asyncio.run(running())):\n"
        "    print(type(loop).__module__ + '.' + type(loop).__qualname__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLPLATFORM_SERVING_EVENT_LOOP"}
    if kind != "uvloop":  # the default
        env["MLPLATFORM_SERVING_EVENT_LOOP"] = kind
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    loops = done.stdout.split()
    assert len(loops) == 2 and all(loop.startswith(loop_class) for loop in loops), loops
    with pytest.raises(ValueError, match="event_loop"):
        ServingSettings(event_loop="trio")
