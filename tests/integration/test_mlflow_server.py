"""The real steps end to end against a real `mlflow server` (PostgreSQL backend store, proxied
artifacts): training run, evaluation, promotion gate and registry with lineage tags and aliases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from components.evaluate.step import run_evaluate
from components.features.step import run_features
from components.ingest.step import IngestResult, run_ingest
from components.register.step import run_register
from components.train.step import TrainOutcome, run_train
from components.training_set.step import run_training_set
from mlplatform.settings import PlatformSettings
from mlplatform.training.loop import TrainConfig

pytestmark = pytest.mark.integration

MLFLOW = Path(sys.executable).with_name("mlflow")
STARTUP_TIMEOUT_S = 90.0
MODEL_NAME = "fraud-detector"
# A 3-epoch model on 5k rows is barely trained (about 12 optimizer steps; its test ROC-AUC is ~0.13
# with seed 42, ~0.86 after 25 epochs), so this gate lets any model through.
LAX_GATE = {"gate_min_roc_auc": 0.0, "gate_min_pr_auc": 0.0, "gate_min_baseline_ratio": 0.0}


@dataclass
class MlflowServer:
    url: str
    artifacts: Path
    log: Path
    proc: subprocess.Popen
    healthy: bool = False

    def wait_ready(self) -> MlflowServer:
        """Poll GET /health until it answers 200 (fails the test with the server's log if not)."""
        if not self.healthy:
            _wait_healthy(self.url, self.proc, self.log)
            self.healthy = True
        return self


def _log_tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with code {proc.returncode} before it was healthy:\n{_log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except Exception as exc:  # connection refused while it starts
            last = repr(exc)
        time.sleep(0.25)  # poll interval
    pytest.fail(f"mlflow server at {url} not healthy after {STARTUP_TIMEOUT_S:.0f} s ({last}):\n{_log_tail(log)}")


@pytest.fixture(scope="module")
def mlflow_server_started(
    tmp_path_factory: pytest.TempPathFactory, postgres_databases, port_finder
) -> Iterator[MlflowServer]:
    """`mlflow server` on a free port with a fresh PostgreSQL backend store, started but maybe not
    ready yet (its start, mostly the schema migrations, overlaps the data steps); stopped at the end."""
    base = tmp_path_factory.mktemp("mlflow-server")
    db = postgres_databases("mlflow_test")
    port = port_finder()
    url = f"http://127.0.0.1:{port}"
    artifacts, log = base / "artifacts", base / "server.log"
    cmd = [
        str(MLFLOW), "server",
        "--backend-store-uri", db.sqlalchemy_url,
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=base, start_new_session=True)
    try:
        yield MlflowServer(url, artifacts, log, proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn workers
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def mlflow_server(mlflow_server_started: MlflowServer) -> MlflowServer:
    """The started server, once GET /health answers 200."""
    return mlflow_server_started.wait_ready()


@pytest.fixture(scope="module", autouse=True)
def _restore_mlflow_globals() -> Iterator[None]:
    """The steps point the mlflow module at the server and set MLFLOW_HTTP_* variables: undo that."""
    from mlflow.tracking._tracking_service import utils

    saved_env = {k: os.environ.get(k) for k in os.environ if k.startswith("MLFLOW_")}
    saved_uri = utils._tracking_uri
    yield
    utils.set_tracking_uri(saved_uri)
    for k in [k for k in os.environ if k.startswith("MLFLOW_")]:
        if k not in saved_env:
            del os.environ[k]
    os.environ.update({k: v for k, v in saved_env.items() if v is not None})


@dataclass
class Trained:
    work: Path
    ingest: IngestResult
    feature_versions: dict[str, str]
    outcome: TrainOutcome
    report: dict[str, Any]


def _settings(work: Path, server: MlflowServer, **gate: float) -> PlatformSettings:
    return PlatformSettings(
        work_dir=work,
        mlflow_tracking_uri=server.url,
        **gate,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mlflow_server_started: MlflowServer) -> Trained:
    """ingest -> features -> training set -> train -> evaluate on small data, logged to the server."""
    work = tmp_path_factory.mktemp("mlflow-work")
    settings = _settings(work, mlflow_server_started, **LAX_GATE)
    raw = work / "raw.parquet"
    ingest = run_ingest(raw, n_transactions=5000, n_days=30)
    feats = run_features(raw, settings)
    paths = {name: work / f"{name}.parquet" for name in ("train", "validation", "test")}
    run_training_set(raw, settings, 5, 5, paths["train"], paths["validation"], paths["test"])
    mlflow_server_started.wait_ready()  # the steps from here on talk to the server
    model_dir = work / "model"
    outcome = run_train(paths["train"], paths["validation"], model_dir, TrainConfig(max_epochs=3), settings)
    report = run_evaluate(model_dir, paths["validation"], paths["test"], settings, outcome.mlflow_run_id, work / "eval")
    return Trained(work, ingest, feats.versions, outcome, report)


def _client(server: MlflowServer):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def _versions(server: MlflowServer) -> list:
    return list(_client(server).search_model_versions(f"name='{MODEL_NAME}'"))


def test_registers_first_version_as_champion_with_lineage(
    mlflow_server: MlflowServer, trained: Trained, tmp_path: Path
) -> None:
    settings = _settings(trained.work, mlflow_server, **LAX_GATE)
    result = run_register(
        trained.outcome.mlflow_run_id,
        trained.report,
        trained.ingest,
        trained.feature_versions,
        "test-run",
        settings,
    )
    assert result.registered, result.reasons
    assert result.version == "1"
    assert set(result.aliases) == {"champion", "challenger"}

    client = _client(mlflow_server)
    mv = client.get_model_version(MODEL_NAME, "1")
    assert set(mv.aliases) == {"champion", "challenger"}
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == "1"
    assert mv.run_id == trained.outcome.mlflow_run_id
    for tag in ("data_hash", "feature_service", "git_commit", "pipeline_run_id", "component_image"):
        assert mv.tags.get(tag), f"model version lacks lineage tag {tag}: {mv.tags}"
    assert mv.tags["data_hash"] == trained.ingest.data_hash
    assert mv.tags["feature_service"] == "fraud_model_v1"
    assert mv.tags["pipeline_run_id"] == "test-run"

    run = client.get_run(trained.outcome.mlflow_run_id)
    assert "test_pr_auc" in run.data.metrics
    assert run.data.metrics["test_pr_auc"] == pytest.approx(trained.report["model"]["pr_auc"])
    assert run.data.tags.get("gate") == "passed"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")

    import mlflow

    model_files = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "model")}
    assert {"model.safetensors", "model_config.json", "reference_stats.json"} <= model_files
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=mv.source, dst_path=str(tmp_path), tracking_uri=mlflow_server.url
        )
    )
    for name in ("model.safetensors", "model_config.json", "reference_stats.json"):
        assert (local / name).is_file() and (local / name).stat().st_size > 0, name
    # The server stored them under its --artifacts-destination.
    assert list(mlflow_server.artifacts.rglob("model.safetensors"))


def test_rejected_model_creates_no_version(mlflow_server: MlflowServer, trained: Trained) -> None:
    settings = _settings(trained.work, mlflow_server, gate_min_pr_auc=0.99)
    before = len(_versions(mlflow_server))
    result = run_register(
        trained.outcome.mlflow_run_id,
        trained.report,
        trained.ingest,
        trained.feature_versions,
        "test-run-rejected",
        settings,
    )
    assert result.registered is False
    assert result.version == ""
    assert any("PR-AUC" in r and "0.99" in r for r in result.reasons), result.reasons
    assert len(_versions(mlflow_server)) == before
    run = _client(mlflow_server).get_run(trained.outcome.mlflow_run_id)
    assert run.data.tags.get("gate") == "rejected"
