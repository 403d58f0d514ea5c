"""Online inference end to end on real processes: a model registered in MLflow, deployed by alias,
served by the KServe transformer (Feast online store in the real Redis, SQL registry in the real
PostgreSQL) and predictor, called with real clients (tritonclient, KServe's REST and gRPC clients)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pandas as pd
import psutil
import pytest
import redis
import yaml

from components.features.step import run_features
from components.ingest.step import run_ingest
from mlplatform.deploy.artifact import ArtifactInvalid
from mlplatform.deploy.cluster import serving_env
from mlplatform.features import store as featurestore
from mlplatform.features.compute import MODEL_FEATURES, model_input
from mlplatform.local.serving import LocalService, prepare, serve_local, start_local
from mlplatform.monitoring.prediction_log import read_records
from mlplatform.settings import PlatformSettings
from mlplatform.training.model import load_model, predict_proba
from tests.helpers import loadgen, train_and_register

pytestmark = pytest.mark.integration

CONFIG_FILE = "feature_store_redis_postgres.yaml"
REDIS_DB = int(os.environ.get("MLPLATFORM_TEST_SERVING_REDIS_DB", "12"))
SPEC = Path(__file__).resolve().parents[3] / "shared" / "upstream" / "kserve" / "rest_predict_v2.yaml"
NAME = "fraud-detector"


@dataclass
class Served:
    settings: PlatformSettings
    raw: pd.DataFrame
    service: LocalService
    model_dir: Path
    version: str
    features_end_unix_s: float  # the online store holds the latest feature rows up to here


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_info, postgres_databases) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("serving")
    db = postgres_databases("serving")
    env = {
        "MLPLATFORM_FEAST_REDIS": f"{redis_info.address},db={REDIS_DB}",
        "MLPLATFORM_FEAST_REGISTRY": db.sqlalchemy_url,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    flush = redis.Redis(host=redis_info.host, port=redis_info.port, db=REDIS_DB)
    flush.flushdb()
    settings = PlatformSettings(work_dir=work, feast_config_file=CONFIG_FILE)
    # Small data and one epoch (as the reliability stack): these tests need a served model, not a good one.
    run_ingest(work / "raw.parquet", n_transactions=5_000, n_days=30, seed=11)
    features = run_features(work / "raw.parquet", settings)
    train_and_register(settings, work, max_epochs=1)
    deployed, service = serve_local(settings, "champion")
    try:
        end = pd.Timestamp(features.materialized_until).timestamp()
        yield Served(settings, pd.read_parquet(work / "raw.parquet"), service, Path(deployed.storage_uri), "1", end)
    finally:
        service.stop()
        flush.flushdb()
        flush.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _recent_pairs(raw: pd.DataFrame, n: int) -> list[tuple[int, int]]:
    """(customer, merchant) pairs from the last day's transactions: features fresh in both stores."""
    last = raw.sort_values("event_timestamp").tail(400)
    pairs = list(dict.fromkeys(zip(last["customer_id"].astype(int), last["merchant_id"].astype(int), strict=True)))
    return pairs[:n]


def _after_end(served: Served, seconds: float = 60.0) -> float:
    """Whole Unix seconds shortly after the newest materialized feature row (exact in every timestamp type).

    Online features are the latest materialized ones, so only events after that instant see the same
    values offline (point in time) as online.
    """
    return float(int(served.features_end_unix_s) + seconds)


def test_transformer_scores_known_and_flags_unknown_entities(served: Served) -> None:
    (c, m), t = _recent_pairs(served.raw, 1)[0], _after_end(served)
    body = {
        "instances": [
            {"customer_id": c, "merchant_id": m, "amount": 25.0, "timestamp": t, "transaction_id": "known"},
            {"customer_id": 10**12, "merchant_id": 10**12, "amount": 25.0, "timestamp": t},
        ]
    }
    out = httpx.post(served.service.predict_url, json=body, timeout=10).json()
    assert out["model_version"] == served.version and out["role"] == "stable"
    known, unknown = out["predictions"]
    assert known["transaction_id"] == "known" and known["flags"] == []
    assert unknown["flags"] == ["unknown_customer", "unknown_merchant"]
    for p in (known, unknown):
        assert 0.0 <= p["score"] <= 1.0 and p["is_fraud"] == (p["score"] >= p["threshold"])


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b"{not json", {"content-type": "application/json"}, 400),
        (b'{"instances": [{"customer_id": "x"}]}', {"content-type": "application/json"}, 400),
        (b'{"instances": []}', {"content-type": "application/json"}, 400),
        (b'{"instances": [{"customer_id": 1, "merchant_id": 1, "amount": 1e300, "timestamp": 1770682200}]}', {}, 400),
        (b"\xff\xfe\xfa", {"content-type": "application/json"}, 400),
        (b"x" * (2 * 1024 * 1024), {"content-type": "application/json"}, 413),
    ],
    ids=["malformed", "wrong-type", "empty", "absurd-amount", "invalid-utf8", "oversize"],
)
def test_bad_requests_get_4xx_with_a_json_error_and_the_server_keeps_answering(
    served: Served, content: bytes, headers: dict[str, str], status: int
) -> None:
    response = httpx.post(served.service.predict_url, content=content, headers=headers, timeout=10)
    assert response.status_code == status, response.text
    assert "error" in response.json()
    ok = httpx.post(
        served.service.predict_url,
        json={"instances": [{"customer_id": 1, "merchant_id": 1, "amount": 5.0, "timestamp": 1770682200}]},
        timeout=10,
    )
    assert ok.status_code == 200


def test_training_serving_parity_within_1e_6(served: Served) -> None:
    pairs = _recent_pairs(served.raw, 20)
    start = _after_end(served)
    rng = np.random.default_rng(3)
    events = pd.DataFrame(
        {
            "customer_id": [c for c, _ in pairs],
            "merchant_id": [m for _, m in pairs],
            "amount": np.round(rng.lognormal(3.5, 1.2, len(pairs)), 2),
            "event_unix_s": [start + 37.0 * i for i in range(len(pairs))],
        }
    )
    events["event_timestamp"] = pd.to_datetime(events["event_unix_s"], unit="s", utc=True)
    s = served.settings
    store = featurestore.open_store(s.feast_repo, s.feast_data, s.feast_config_file)
    offline = store.get_historical_features(
        entity_df=events, features=store.get_feature_service(featurestore.FEATURE_SERVICE)
    ).to_df()
    offline = events[["customer_id", "event_unix_s"]].merge(offline, on=["customer_id", "event_unix_s"], how="left")
    model, _ = load_model(served.model_dir)
    expected = predict_proba(model, model_input(offline)).astype(np.float64)
    body = {
        "instances": [
            {
                "customer_id": int(r.customer_id),
                "merchant_id": int(r.merchant_id),
                "amount": float(r.amount),
                "timestamp": float(r.event_unix_s),
            }
            for r in events.itertuples()
        ]
    }
    out = httpx.post(served.service.predict_url, json=body, timeout=10).json()
    online = np.array([p["score"] for p in out["predictions"]])
    assert all(p["flags"] == [] for p in out["predictions"])
    np.testing.assert_allclose(online, expected, rtol=0, atol=1e-6)


def test_the_benchmarks_load_generator_counts_the_real_endpoints_answers(served: Served) -> None:
    """benchmarks/loadgen (what every serving benchmark measures with) against the real transformer: valid and
    invalid bodies sent in turn on schedule, each answer counted under its status, latency for the answered."""
    (c, m), t = _recent_pairs(served.raw, 1)[0], _after_end(served)
    valid = [
        json.dumps({"instances": [{"customer_id": c, "merchant_id": m, "amount": a, "timestamp": t}]}).encode()
        for a in (12.5, 80.0)
    ]
    invalid = b'{"instances": [{"customer_id": "x"}]}'
    done = loadgen(served.service.predict_url, [*valid, invalid], mode="open", rate=60, seconds=1, warmup_seconds=0.5)
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    assert result["total"] == 90 and result["sent"] == 60  # requests 30..89 counted: every third one invalid
    assert result["statuses"] == {"200": 40, "400": 20} and result["errors"] == 20
    assert len(result["latencies_ms"]) == 40

    done = loadgen(served.service.predict_url, valid, mode="closed", concurrency=4, seconds=0.5)
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    assert result["sent"] == len(result["latencies_ms"]) > 0 and result["statuses"] == {"200": result["sent"]}


def test_predictor_speaks_open_inference_protocol_to_tritonclient(served: Served) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{served.service.predictor_port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    meta = client.get_model_metadata(NAME)
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, len(MODEL_FEATURES)]}]
    rows = np.ones((3, len(MODEL_FEATURES)), np.float32)
    infer_input = triton.InferInput("features", list(rows.shape), "FP32")
    infer_input.set_data_from_numpy(rows, binary_data=False)
    result = client.infer(NAME, [infer_input], outputs=[triton.InferRequestedOutput("score", binary_data=False)])
    scores = result.as_numpy("score")
    model, _ = load_model(served.model_dir)
    np.testing.assert_allclose(scores, predict_proba(model, rows), atol=1e-6)


def test_kserve_rest_and_grpc_clients_get_the_same_scores(served: Served) -> None:
    asyncio.run(_kserve_clients(served))


async def _kserve_clients(served: Served) -> None:
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

    rows = np.full((2, len(MODEL_FEATURES)), 0.5, np.float32)
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=10))
    out_v1 = await v1.infer(served.service.predictor_url, {"instances": rows.tolist()}, model_name=NAME)
    await v1.close()
    request = InferRequest(NAME, [InferInput("features", list(rows.shape), "FP32", rows.tolist())])
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=10))
    out_v2 = await v2.infer(served.service.predictor_url, request, model_name=NAME)
    await v2.close()
    grpc = InferenceGRPCClient(f"127.0.0.1:{served.service.predictor_grpc_port}", timeout=10)
    grpc_input = InferInput("features", list(rows.shape), "FP32")
    grpc_input.set_data_from_numpy(rows, binary_data=False)
    out_grpc = await grpc.infer(InferRequest(NAME, [grpc_input]))
    await grpc.close()
    v2_scores = out_v2.outputs[0].as_numpy()
    np.testing.assert_allclose(out_v1["predictions"], v2_scores, atol=1e-6)
    np.testing.assert_allclose(out_grpc.outputs[0].as_numpy(), v2_scores, atol=1e-6)


def _without_nulls(obj: dict, optional: set[str]) -> dict:
    """KServe 0.21 writes absent optional fields (`versions`, `parameters`) as null where the spec leaves
    them out; drop exactly those (and fail on any other null)."""
    nulls = {k for k, v in obj.items() if v is None}
    assert nulls <= optional, f"unexpected null fields {nulls - optional}"
    return {k: v for k, v in obj.items() if v is not None}


def _spec_validator(name: str) -> jsonschema.Draft7Validator:
    spec = yaml.safe_load(SPEC.read_text())
    return jsonschema.Draft7Validator({"$ref": f"#/components/schemas/{name}", "components": spec["components"]})


def test_v2_routes_follow_the_protocol_spec(served: Served) -> None:
    base = served.service.predictor_url
    with httpx.Client(base_url=base, timeout=10) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get(f"/v2/models/{NAME}/ready").status_code == 200
        _spec_validator("metadata_server_response").validate(c.get("/v2").json())
        meta = _without_nulls(c.get(f"/v2/models/{NAME}").json(), {"versions"})
        _spec_validator("metadata_model_response").validate(meta)
        n = len(MODEL_FEATURES)
        request = {"inputs": [{"name": "features", "shape": [1, n], "datatype": "FP32", "data": [0.5] * n}]}
        _spec_validator("inference_request").validate(request)
        response = c.post(f"/v2/models/{NAME}/infer", json=request)
        assert response.status_code == 200
        body = _without_nulls(response.json(), {"parameters", "id"})
        body["outputs"] = [_without_nulls(o, {"parameters"}) for o in body["outputs"]]
        _spec_validator("inference_response").validate(body)
        error = c.post(
            f"/v2/models/{NAME}/infer",
            json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
        )
        assert error.status_code == 400
        _spec_validator("inference_error_response").validate(error.json())


def test_metrics_carry_model_version_and_role(served: Served) -> None:
    text = httpx.get(f"{served.service.url}/metrics", timeout=10).text
    for family in (
        "mlplatform_inference_requests_total",
        "mlplatform_inference_stage_seconds_bucket",
        "mlplatform_feature_lookup_seconds_bucket",
        "mlplatform_feature_misses_total",
        "mlplatform_prediction_score_bucket",
        "mlplatform_model_info",
        "mlplatform_prediction_log_records_total",
        "request_preprocess_seconds_bucket",  # KServe's own stage histograms stay
    ):
        assert family in text, family
    assert (
        'mlplatform_inference_requests_total{component="transformer",model_name="fraud-detector",model_version="1"'
        ',outcome="ok",role="stable"}' in text
    )
    predictor = httpx.get(f"{served.service.predictor_url}/metrics", timeout=10).text
    assert 'mlplatform_model_info{component="predictor"' in predictor


def test_corrupt_artifact_is_refused_before_serving(served: Served, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(served.model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    from mlplatform.deploy.artifact import verify_artifact

    with pytest.raises(ArtifactInvalid, match="cannot be served"):
        verify_artifact(broken)
    assert prepare(served.settings, "champion").model_version == served.version  # the registered one is fine


@pytest.mark.parametrize("tensor_hop", [True, False], ids=["collocated-tensor-hop", "separate-http"])
def test_graceful_stop_logs_every_answered_prediction_and_a_dead_predictor_means_503(
    served: Served, tmp_path: Path, tensor_hop: bool
) -> None:
    """In both layouts' hops (the collocated pod's tensor socket, separate pods' HTTP) the same scores as the
    module's service, every answered prediction logged, and 503 naming the predictor once it is gone."""
    env = {**serving_env(served.settings, served.version), "MLPLATFORM_SERVING_PREDICTION_LOG_DIR": str(tmp_path / "p")}
    service = start_local(served.model_dir, env=env, log_dir=tmp_path / "logs", tensor_hop=tensor_hop)
    try:
        listening = service.socket_dir is not None and (service.socket_dir / "predictor.sock").is_socket()
        assert listening == tensor_hop
        (c, m), t = _recent_pairs(served.raw, 1)[0], _after_end(served)
        answered = 0
        with httpx.Client(timeout=10) as client:
            for i in range(60):
                tx = {"customer_id": c, "merchant_id": m, "amount": 10.0 + i, "timestamp": t + i}
                body = {"instances": [tx, {**tx, "amount": 99.0}]}
                r = client.post(service.predict_url, json=body)
                assert r.status_code == 200
                answered += len(r.json()["predictions"])
                if i == 0:  # the module's service calls its predictor over the tensor hop
                    reference = client.post(served.service.predict_url, json=body).json()["predictions"]
                    assert [p["score"] for p in r.json()["predictions"]] == [p["score"] for p in reference]
            service.processes["predictor"].send_signal(signal.SIGKILL)
            service.processes["predictor"].wait()
            r = client.post(service.predict_url, json={"instances": [tx]})
            assert r.status_code == 503 and r.json()["dependency"] == "predictor" and "Retry-After" in r.headers
    finally:
        codes = service.stop()
    assert codes["transformer"] == 0
    records = list(read_records(tmp_path / "p"))
    assert len(records) == answered == 120
    assert {r["model_version"] for r in records} == {served.version}
    assert set(records[0]["features"]) == set(MODEL_FEATURES)


def _topic_end_offsets(address: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": address, "group.id": "offsets"})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions}
    finally:
        consumer.close()


def _read_from(address: str, topic: str, offsets: dict[int, int], expected: int) -> list[tuple[str, dict]]:
    """(key, value) of the events of `topic` after `offsets`, until `expected` arrived and the topic is quiet."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": address, "group.id": "reader", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, o) for p, o in offsets.items()])
    events: list[tuple[str, dict]] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                if len(events) >= expected:
                    break
                continue
            assert msg.error() is None, msg.error()
            events.append((msg.key().decode(), json.loads(msg.value())))
    finally:
        consumer.close()
    return events


def test_each_answered_transaction_and_its_prediction_is_published_once_to_kafka(
    served: Served, tmp_path: Path
) -> None:
    """With Kafka configured the transformer publishes, keyed by customer, the prediction-log record of every
    answered transaction to the predictions topic and the transaction to the transactions topic, exactly once; the
    prediction log gets the same records; the backlog metric returns to 0 (docs/adr/0018-event-stream.md)."""
    from mlplatform.events import PREDICTIONS, SCHEMA_VERSION, TRANSACTIONS, ensure_topics

    address = os.environ.get("MLPLATFORM_TEST_KAFKA", "127.0.0.1:19092")
    ensure_topics(address)
    start = {t.name: _topic_end_offsets(address, t.name) for t in (PREDICTIONS, TRANSACTIONS)}
    env = {
        **serving_env(served.settings, served.version),
        "MLPLATFORM_SERVING_PREDICTION_LOG_DIR": str(tmp_path / "p"),
        "MLPLATFORM_SERVING_KAFKA_BOOTSTRAP_SERVERS": address,
        "MLPLATFORM_SERVING_EVENT_SPOOL_DIR": str(tmp_path / "spool"),
    }
    service = start_local(served.model_dir, env=env, log_dir=tmp_path / "logs")
    answered: dict[str, float] = {}
    try:
        pairs, t = _recent_pairs(served.raw, 5), _after_end(served)
        with httpx.Client(timeout=10) as client:
            for i in range(40):
                c, m = pairs[i % len(pairs)]
                txs = [
                    {
                        "transaction_id": f"tx-{i}-{k}",
                        "customer_id": c,
                        "merchant_id": m,
                        "amount": 5.0 + k + i,
                        "timestamp": t + i,
                    }
                    for k in range(2)
                ]
                r = client.post(service.predict_url, json={"instances": txs})
                assert r.status_code == 200, r.text
                answered.update({p["transaction_id"]: p["score"] for p in r.json()["predictions"]})

            def backlog() -> float:
                text = client.get(f"{service.url}/metrics").text
                return sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("mlplatform_event_backlog{")
                )

            deadline = time.monotonic() + 30
            while backlog() > 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert backlog() == 0
    finally:
        codes = service.stop()
    assert codes["transformer"] == 0
    predictions = _read_from(address, PREDICTIONS.name, start[PREDICTIONS.name], len(answered))
    transactions = _read_from(address, TRANSACTIONS.name, start[TRANSACTIONS.name], len(answered))
    ids = [v["transaction_id"] for _, v in predictions]
    assert sorted(ids) == sorted(answered), f"{len(ids)} published for {len(answered)} answered"
    assert {v["transaction_id"]: v["score"] for _, v in predictions} == answered
    assert all(k == str(v["customer_id"]) and v["schema_version"] == SCHEMA_VERSION for k, v in predictions)
    assert sorted(v["transaction_id"] for _, v in transactions) == sorted(answered)
    logged = {r["transaction_id"]: r for r in read_records(tmp_path / "p")}
    for _, v in predictions:
        assert {k: v[k] for k in logged[v["transaction_id"]]} == logged[v["transaction_id"]]


def test_cli_deploy_dry_run_prints_the_inference_service_and_refuses_what_a_cluster_cannot_fetch(
    served: Served,
) -> None:
    from typer.testing import CliRunner

    from mlplatform.cli import app

    runner = CliRunner()
    work = ["--work-dir", str(served.settings.work_dir)]
    local = runner.invoke(app, ["deploy", "--alias", "champion", "--dry-run", *work])
    assert local.exit_code == 0, local.output
    manifest = yaml.safe_load(local.output)
    assert manifest["kind"] == "InferenceService"
    assert manifest["metadata"]["annotations"]["mlplatform.io/model-version"] == served.version
    cluster = runner.invoke(app, ["deploy", "--target", "cluster", "--dry-run", *work])
    assert cluster.exit_code == 2 and "not fetchable from a cluster" in cluster.output
    missing = runner.invoke(app, ["deploy", "--alias", "nope", "--dry-run", *work])
    assert missing.exit_code == 2 and "no version of model 'fraud-detector' has alias 'nope'" in missing.output


def _serve_command(served: Served, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlplatform.cli",
            "serve",
            "--port",
            str(port),
            "--work-dir",
            str(served.settings.work_dir),
        ],
        env={**os.environ, "MLPLATFORM_FEAST_CONFIG_FILE": CONFIG_FILE},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_mlplatform_serve_answers_until_sigterm(served: Served, tmp_path: Path) -> None:
    from mlplatform.local.serving import free_port

    port = free_port()
    proc = _serve_command(served, port)
    try:
        url = f"http://127.0.0.1:{port}/v1/models/{NAME}:predict"
        body = {"instances": [{"customer_id": 1, "merchant_id": 1, "amount": 5.0, "timestamp": 1770682200}]}
        status = None
        with httpx.Client(timeout=5) as client:
            for _ in range(600):  # readiness: up to 120 s
                try:
                    status = client.post(url, json=body).status_code
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None:
                        break
                    time.sleep(0.2)
        assert status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert b"stopped" in out


def test_sigterm_while_the_servers_start_stops_them_and_leaves_no_process(served: Served) -> None:
    """The signal arrives once both servers were spawned and before they are ready (loading takes seconds)."""
    from mlplatform.local.serving import free_port

    proc = _serve_command(served, free_port())
    parent = psutil.Process(proc.pid)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while len(children) < 2 and time.monotonic() < deadline and proc.poll() is None:
            children = parent.children()
            time.sleep(0.05)
        assert len(children) == 2, "mlplatform serve never started its two servers"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert b"stopped" in out
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {alive}"
