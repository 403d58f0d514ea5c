"""The MLflow tracking server dies during the register step: the step retries with backoff, then fails
with an error naming the server, and once the server is back no model version was left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.ingest.step import IngestResult
from mlplatform.local.serving import free_port
from mlplatform.settings import PlatformSettings
from tests.reliability.stack import Stack, record_result

pytestmark = pytest.mark.integration

MLFLOW = Path(sys.executable).with_name("mlflow")
LAX_GATE = {"gate_min_roc_auc": 0.0, "gate_min_pr_auc": 0.0, "gate_min_baseline_ratio": 0.0}
REPORT = {"model": {"pr_auc": 0.5, "roc_auc": 0.9}, "baseline": {"pr_auc": 0.1}, "threshold": 0.5, "champion": None}


class Server:
    """`mlflow server` with a SQLite backend store; `kill` and `start` keep port, store and artifacts."""

    def __init__(self, base: Path) -> None:
        self.base, self.port = base, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_seconds: float = 120.0) -> None:
        cmd = [
            str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{self.base / 'mlflow.db'}",
            "--artifacts-destination", str(self.base / "artifacts"), "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        with (self.base / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.base, start_new_session=True
            )
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.base / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)  # poll of the readiness check
        pytest.fail(f"mlflow server not healthy after {timeout_seconds} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its workers, abruptly
            self.proc.wait(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    running.start()
    yield running
    running.kill()


@pytest.fixture
def _restore_mlflow_globals() -> Iterator[None]:
    from mlflow.tracking._tracking_service import utils

    saved_env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    saved_uri = utils._tracking_uri
    yield
    utils.set_tracking_uri(saved_uri)
    for k in [k for k in os.environ if k.startswith("MLFLOW_")]:
        os.environ.pop(k)
    os.environ.update(saved_env)


def test_register_step_retries_then_fails_clearly_and_leaves_no_version(
    stack: Stack, server: Server, tmp_path: Path, _restore_mlflow_globals: None
) -> None:
    import mlflow
    from mlflow import MlflowClient

    from components.register.step import run_register
    from mlplatform import registry

    settings = PlatformSettings(
        work_dir=tmp_path / "work",
        mlflow_tracking_uri=server.url,
        mlflow_max_retries=2,
        mlflow_request_timeout_seconds=5,
        **LAX_GATE,
    )
    registry.configure(settings)
    with mlflow.start_run() as run:  # the train step's run: a model artifact on the server
        mlflow.log_artifacts(str(stack.model_dir), "model")
    ingest = IngestResult(rows=1, fraud_rows=0, data_hash="h", start="s", end="e")

    server.kill()
    started = time.monotonic()
    with pytest.raises(Exception) as failure:
        run_register(run.info.run_id, REPORT, ingest, {}, "fault-test", settings)
    elapsed = time.monotonic() - started
    message = str(failure.value)
    assert f"127.0.0.1:{server.port}" in message or server.url in message, message
    assert "retries" in message.lower() or "max retries" in message.lower(), message
    assert elapsed >= 1.0, f"failed after {elapsed:.2f} s: no backoff between retries"

    server.start()
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    versions = client.search_model_versions(f"name='{settings.registered_model_name}'")
    record_result(
        "fault_mlflow",
        {"failed_after_seconds": round(elapsed, 2), "error": message[:300], "versions_after_restart": len(versions)},
    )
    assert versions == []
    # and with the server back, the same step registers the version completely
    result = run_register(run.info.run_id, REPORT, ingest, {}, "fault-test", settings)
    assert result.registered and set(result.aliases) == {"champion", "challenger"}
