"""The monitor process for real: a trained, registered model (MLflow on SQLite), a prediction log of generated
traffic with and without the generator's drift, delayed labels arriving while it runs, /metrics scraped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from components.train.step import run_train
from mlplatform import registry
from mlplatform.cli import app
from mlplatform.data.generator import GeneratorConfig, generate_transactions
from mlplatform.data.labels import emit_labels, write_labels
from mlplatform.features.compute import (
    MODEL_FEATURES,
    customer_features,
    merchant_features,
    model_input,
    on_demand_features,
    request_fields,
)
from mlplatform.monitoring.drift import PSI_ALERT
from mlplatform.monitoring.prediction_log import PredictionLog
from mlplatform.settings import PlatformSettings
from mlplatform.training.loop import TrainConfig
from mlplatform.training.model import load_model, predict_proba

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Days generated; training from the day the 30-day aggregates are warm, then validation, then live traffic.
N_DAYS, TRAIN_FROM_DAY, VALIDATION_FROM_DAY, LIVE_FROM_DAY = 60, 31, 50, 55
N_TRANSACTIONS = 12_000
MODEL = "fraud-detector"


def featurize(tx: pd.DataFrame) -> pd.DataFrame:
    """Model features of each transaction as of its time: the real feature code, joined point-in-time
    (what the Feast offline store does for training and the online store holds at serving time)."""
    events = pd.concat([tx.drop(columns=["amount"]), request_fields(tx)], axis=1).sort_values("event_timestamp")
    cust = customer_features(tx).sort_values("event_timestamp")
    merch = merchant_features(tx).drop(columns=["merchant_category"]).sort_values("event_timestamp")
    frame = pd.merge_asof(events, cust, on="event_timestamp", by="customer_id", direction="backward")
    frame = pd.merge_asof(frame, merch, on="event_timestamp", by="merchant_id", direction="backward")
    frame[list(on_demand_features(frame).columns)] = on_demand_features(frame)
    return frame.reset_index(drop=True)


def live_part(frame: pd.DataFrame) -> pd.DataFrame:
    start = frame["event_timestamp"].min().normalize() + pd.Timedelta(days=LIVE_FROM_DAY)
    return frame[frame["event_timestamp"] >= start].reset_index(drop=True)


@dataclass
class Scenario:
    settings: PlatformSettings
    raw: dict[str, pd.DataFrame]
    served: dict[str, list[str]]
    registered_at: float


def prediction_records(frame: pd.DataFrame, scores: np.ndarray, version: str, now: datetime) -> list[dict[str, Any]]:
    """Records in the layout of serving/transformer.py, served during the last ten minutes."""
    x = model_input(frame)
    return [
        {
            "request_id": f"req-{r.transaction_id}",
            "record_id": r.transaction_id,
            "transaction_id": r.transaction_id,
            "served_at": (now - timedelta(seconds=600 * i / len(frame))).isoformat(),
            "event_unix_s": float(r.event_unix_s),
            "model_name": MODEL,
            "model_version": version,
            "role": "stable",
            "customer_id": int(r.customer_id),
            "merchant_id": int(r.merchant_id),
            "amount": float(r.amount),
            "features": dict(zip(MODEL_FEATURES, x[i].tolist(), strict=True)),
            "score": float(scores[i]),
            "is_fraud": bool(scores[i] >= 0.5),
            "flags": [],
        }
        for i, r in enumerate(frame.itertuples())
    ]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """Train on undrifted data, register three versions of the model, log traffic for each."""
    work = tmp_path_factory.mktemp("monitor")
    settings = PlatformSettings(work_dir=work)
    raw = {
        "undrifted": generate_transactions(GeneratorConfig(n_transactions=N_TRANSACTIONS, n_days=N_DAYS, seed=21)),
        "drifted": generate_transactions(
            GeneratorConfig(n_transactions=N_TRANSACTIONS, n_days=N_DAYS, seed=22, drift=1.0)
        ),
    }
    frame = featurize(raw["undrifted"])
    day = (frame["event_timestamp"] - frame["event_timestamp"].min().normalize()) / pd.Timedelta(days=1)
    paths = {name: work / f"{name}.parquet" for name in ("train", "validation")}
    frame[(day >= TRAIN_FROM_DAY) & (day < VALIDATION_FROM_DAY)].to_parquet(paths["train"])
    frame[(day >= VALIDATION_FROM_DAY) & (day < LIVE_FROM_DAY)].to_parquet(paths["validation"])
    config = TrainConfig(max_epochs=10, batch_size=256, seed=1, device="cpu", patience=10)
    outcome = run_train(paths["train"], paths["validation"], work / "model", config, settings)
    registry.configure(settings)
    import mlflow

    source = f"{mlflow.get_run(outcome.mlflow_run_id).info.artifact_uri}/model"
    registered_at = time.time()
    for _ in range(3):
        registry.register_version(MODEL, source, outcome.mlflow_run_id, {}, [])

    model, _ = load_model(work / "model")
    now = datetime.now(UTC)
    live = {name: live_part(featurize(tx)) for name, tx in raw.items()}
    records = {
        "1": prediction_records(live["undrifted"], predict_proba(model, model_input(live["undrifted"])), "1", now),
        "2": prediction_records(live["drifted"], predict_proba(model, model_input(live["drifted"])), "2", now),
    }
    records["3"] = records["1"][:10]  # a version with too little traffic for drift values
    log = PredictionLog(work / "predictions").start()
    for version in ("1", "2", "3"):
        log.append([{**r, "model_version": version} for r in records[version]])
    log.close()
    served = {name: [r["transaction_id"] for r in records[v]] for name, v in (("undrifted", "1"), ("drifted", "2"))}
    return Scenario(settings, raw, served, registered_at)


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted label pairs -> value} of a /metrics page."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def of_version(samples: dict[tuple[tuple[str, str], ...], float], version: str) -> dict[str, float]:
    """feature (or "") -> value for one model version."""
    return {dict(k).get("feature", ""): v for k, v in samples.items() if dict(k)["model_version"] == version}


def wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, ready: Callable[[dict[str, Any]], bool]) -> Any:
    """Scrape until `ready(metrics)` holds (the process evaluates every second); fail with its log otherwise."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"monitor exited with {proc.returncode}:\n{log.read_text()}")
        try:
            metrics = scrape(url)
        except httpx.TransportError:
            metrics = {}
        if metrics and ready(metrics):
            return metrics
        time.sleep(0.2)  # poll interval of a readiness check, not a wait for time to pass
    pytest.fail(f"monitor never reported the expected metrics:\n{log.read_text()}")


@dataclass
class MonitorProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    deliver_labels: Callable[[pd.DataFrame, pd.DataFrame], None]  # (labels, raw transactions)


@pytest.fixture(params=["files", "kafka"])
def monitor(
    request: pytest.FixtureRequest, scenario: Scenario, port_finder: Callable[[], int], tmp_path: Path
) -> Iterator[MonitorProcess]:
    """The monitor process reading the prediction log and label folder, or, with the same records and labels, the
    predictions and labels topics of the real broker (as on a cluster: no folder of the transformer mounted)."""
    port = port_finder()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLPLATFORM_")},
        "MLPLATFORM_WORK_DIR": str(scenario.settings.work_dir),
        "MLPLATFORM_MONITOR_HOST": "127.0.0.1",
        "MLPLATFORM_MONITOR_PORT": str(port),
        "MLPLATFORM_MONITOR_INTERVAL_SECONDS": "1",
        "MLPLATFORM_MONITOR_MIN_WINDOW_PREDICTIONS": "100",
        "MLPLATFORM_MONITOR_MIN_LABELLED_PREDICTIONS": "50",
    }
    label_dir = tmp_path / "labels"
    env["MLPLATFORM_MONITOR_LABELS_DIR"] = str(label_dir)

    def to_folder(labels: pd.DataFrame, raw: pd.DataFrame) -> None:
        write_labels(labels, label_dir)

    deliver = to_folder
    if request.param == "kafka":
        from mlplatform.events import PREDICTIONS, SCHEMA_VERSION, ensure_topics
        from mlplatform.monitoring.inputs import publish_labels
        from mlplatform.monitoring.prediction_log import read_records
        from mlplatform.monitoring.settings import MonitorSettings
        from tests.integration.conftest import KAFKA_ADDR

        prefix = f"test-monitor-{port}-{time.time_ns()}."
        ensure_topics(KAFKA_ADDR, prefix=prefix)
        producer = Producer({"bootstrap.servers": KAFKA_ADDR, "enable.idempotence": True})
        for r in read_records(scenario.settings.work_dir / "predictions"):
            producer.produce(
                prefix + PREDICTIONS.name, json.dumps({**r, "schema_version": SCHEMA_VERSION}), str(r["customer_id"])
            )
        assert producer.flush(60) == 0
        connection = MonitorSettings(kafka_bootstrap_servers=KAFKA_ADDR, kafka_topic_prefix=prefix)
        env |= {
            "MLPLATFORM_MONITOR_KAFKA_BOOTSTRAP_SERVERS": KAFKA_ADDR,
            "MLPLATFORM_MONITOR_KAFKA_TOPIC_PREFIX": prefix,
            "MLPLATFORM_MONITOR_PREDICTION_LOG_DIR": str(tmp_path / "no-log"),  # read nothing from files
        }

        def to_topic(labels: pd.DataFrame, raw: pd.DataFrame) -> None:
            customers = dict(zip(raw["transaction_id"].astype(str), raw["customer_id"].astype(int), strict=True))
            publish_labels(labels, customers, connection)

        deliver = to_topic
    log = tmp_path / "monitor.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlplatform.monitoring.exporter"], env=env, stdout=out, stderr=out
        )
    try:
        yield MonitorProcess(f"http://127.0.0.1:{port}", proc, log, deliver)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_monitor_process_exports_drift_under_drift_and_quality_once_labels_arrive(
    scenario: Scenario, monitor: MonitorProcess
) -> None:
    url, proc, log = monitor.url, monitor.proc, monitor.log
    metrics = wait_for(
        f"{url}/metrics", proc, log, lambda m: len(m.get("mlplatform_monitor_window_predictions", {})) == 3
    )
    windows = of_version(metrics["mlplatform_monitor_window_predictions"], "1")
    assert windows == {"": len(scenario.served["undrifted"])}
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200

    psi = {v: of_version(metrics["mlplatform_drift_psi"], v) for v in ("1", "2", "3")}
    assert set(psi["1"]) == set(psi["2"]) == set(MODEL_FEATURES)
    assert psi["3"] == {}  # too few predictions: absent, not 0
    drifted = {f for f, value in psi["2"].items() if value >= PSI_ALERT}
    undrifted = {f for f, value in psi["1"].items() if value >= PSI_ALERT}
    assert len(drifted) >= len(undrifted) + 3
    for feature in ("amount_log", "cust_amount_avg_30d", "merchant_amount_avg_30d"):  # amounts x1.6 under drift
        assert psi["2"][feature] >= PSI_ALERT and psi["2"][feature] > 3 * psi["1"][feature], feature
    score_psi = {v: of_version(metrics["mlplatform_score_psi"], v)[""] for v in ("1", "2")}
    assert score_psi["2"] > 2 * score_psi["1"]
    skew = {v: of_version(metrics["mlplatform_feature_skew"], v) for v in ("1", "2")}
    assert skew["2"]["amount_log"] > 0.3 > abs(skew["1"]["amount_log"])
    assert skew["2"]["is_night"] > 0.2 > abs(skew["1"]["is_night"])  # more night activity under drift
    ks = {v: of_version(metrics["mlplatform_drift_ks"], v) for v in ("1", "2")}
    assert "is_night" not in ks["2"]  # discrete: no KS
    assert max(ks["1"].values()) < 0.2 < ks["2"]["amount_log"]
    assert set(of_version(metrics["mlplatform_feature_missing_rate"], "1").values()) == {0.0}
    ages = {v: of_version(metrics["mlplatform_model_age_seconds"], v)[""] for v in ("1", "2", "3")}
    assert all(0 <= age < time.time() - scenario.registered_at + 60 for age in ages.values())
    runs = {dict(k)["outcome"]: v for k, v in metrics["mlplatform_monitor_runs_total"].items()}
    assert runs["ok"] >= 2 and runs["skipped"] >= 1 and runs["error"] == 0
    assert metrics["mlplatform_monitor_last_success_timestamp_seconds"][()] > scenario.registered_at
    assert of_version(metrics["mlplatform_quality_labelled_predictions"], "1") == {"": 0.0}
    assert "mlplatform_quality_pr_auc" not in metrics or not metrics["mlplatform_quality_pr_auc"]

    # chargebacks arrive: the labels known by the end of the period
    until = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=N_DAYS + 30)
    for name in ("undrifted", "drifted"):
        monitor.deliver_labels(emit_labels(scenario.raw[name], scenario.served[name], until), scenario.raw[name])
    metrics = wait_for(f"{url}/metrics", proc, log, lambda m: len(m.get("mlplatform_quality_pr_auc", {})) >= 2)
    labelled = of_version(metrics["mlplatform_quality_labelled_predictions"], "1")[""]
    assert labelled == len(scenario.served["undrifted"])  # every label known by then
    pr_auc = {v: of_version(metrics["mlplatform_quality_pr_auc"], v)[""] for v in ("1", "2")}
    for version in ("1", "2"):
        precision = of_version(metrics["mlplatform_quality_precision"], version)[""]
        recall = of_version(metrics["mlplatform_quality_recall"], version)[""]
        assert 0.0 < precision <= 1.0 and 0.0 < recall <= 1.0
    # fraud rate about 2 %; under drift fraud moves to small purchases the model never saw
    assert pr_auc["1"] > 0.4 and pr_auc["2"] < pr_auc["1"] - 0.15

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_monitor_cli_reports_from_the_registry_and_names_an_unknown_version(scenario: Scenario, tmp_path: Path) -> None:
    runner = CliRunner()
    work = str(scenario.settings.work_dir)
    result = runner.invoke(
        app, ["monitor", "show", "--work-dir", work, "--min-window-predictions", "100", "--output", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    [folder] = list(tmp_path.iterdir())
    assert {"report.md", "report.json", "fraud-detector-v2-psi.png"} <= {p.name for p in folder.iterdir()}

    log = PredictionLog(tmp_path / "other-log").start()
    log.append([{"served_at": datetime.now(UTC).isoformat(), "model_name": MODEL, "model_version": "7"}])
    log.close()
    result = runner.invoke(
        app, ["monitor", "show", "--work-dir", work, "--prediction-log-dir", str(tmp_path / "other-log")]
    )
    assert result.exit_code == 2
    assert "model 'fraud-detector' has no version '7'" in " ".join(result.output.split())
