"""The serving stack the reliability tests and `make reliability` run against, built by the real steps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mlplatform.local.serving import LocalService, free_port, start_local
from mlplatform.settings import PlatformSettings

CONFIG_FILE = "feature_store_redis_postgres.yaml"
NAME = "fraud-detector"
#: The bearer token of the reliability services (a distinctive value the log checks grep for).
TOKEN = "tok-RELIABILITY-7f3a9c1e5b"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class PrivateRedis:
    """A redis-server of our own on a free port (never the shared one): it may be killed and restarted.

    Append-only file with fsync on every write, so a SIGKILL loses nothing and a restart in the same
    folder brings the materialized features back.

    Args:
        data_dir: Where the append-only file lives.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_seconds: float = 20.0) -> PrivateRedis:
        """Start (or restart, same port and folder) and wait until it answers PING with the data loaded."""
        import redis

        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
        ]  # fmt: skip
        with (self.data_dir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout_seconds
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.data_dir}")
                try:
                    if client.ping() and client.info("persistence").get("loading") == 0:
                        return self
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                time.sleep(0.05)  # poll interval of the readiness check
        finally:
            client.close()
        raise RuntimeError(f"redis-server on {self.address} not ready after {timeout_seconds:g} s")

    def kill(self) -> None:
        """SIGKILL: the abrupt fault (no shutdown save, connections reset)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Stack:
    """A registered, deployed (verified) model with its Feast stores, ready to be served.

    Attributes:
        settings: Platform settings of the work dir.
        work: The work dir.
        redis: The private online-store Redis.
        raw: The generated transactions.
        model_dir: The verified artifact folder.
        version: Registered version behind `champion`.
        features_end_unix_s: Newest materialized feature row.
        services: Every service started through `serve` (stopped at the end).
    """

    settings: PlatformSettings
    work: Path
    redis: PrivateRedis
    raw: pd.DataFrame
    model_dir: Path
    version: str
    features_end_unix_s: float
    services: list[LocalService] = field(default_factory=list)

    def serve(self, name: str, **serving_env: str) -> LocalService:
        """Start a predictor + transformer pair for the champion; `serving_env` adds MLPLATFORM_SERVING_* values.

        Args:
            name: Folder name for its logs and prediction log.
            **serving_env: Setting name (e.g. `auth_token`) -> value.
        """
        from mlplatform.deploy.cluster import serving_env as base_env

        env = base_env(self.settings, self.version)
        env["MLPLATFORM_SERVING_PREDICTION_LOG_DIR"] = str(self.work / name / "predictions")
        env.update({f"MLPLATFORM_SERVING_{k.upper()}": v for k, v in serving_env.items()})
        service = start_local(self.model_dir, model_name=NAME, env=env, log_dir=self.work / name / "logs")
        self.services.append(service)
        return service

    def recent_pairs(self, n: int) -> list[tuple[int, int]]:
        """(customer, merchant) pairs of the last transactions: known to the online store."""
        last = self.raw.sort_values("event_timestamp").tail(400)
        pairs = zip(last["customer_id"].astype(int), last["merchant_id"].astype(int), strict=True)
        return list(dict.fromkeys(pairs))[:n]

    def valid_transactions(self, n: int) -> list[dict[str, float | int | str]]:
        """Valid v1 transactions of known entities shortly after the newest features."""
        pairs = self.recent_pairs(max(n, 1))
        t = float(int(self.features_end_unix_s) + 60)
        return [
            {"customer_id": c, "merchant_id": m, "amount": 10.0 + i, "timestamp": t + i}
            for i, (c, m) in enumerate(pairs[i % len(pairs)] for i in range(n))
        ]


def record_result(name: str, payload: dict[str, Any]) -> None:
    """Write one result to MLPLATFORM_RELIABILITY_RESULTS_DIR/<name>.json (when set; `make reliability` sets it)."""
    results = os.environ.get("MLPLATFORM_RELIABILITY_RESULTS_DIR")
    if results:
        Path(results).mkdir(parents=True, exist_ok=True)
        (Path(results) / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")


@contextmanager
def serving_stack(work: Path, n_transactions: int = 5000, max_epochs: int = 1) -> Iterator[Stack]:
    """Private Redis, a fresh PostgreSQL database (Feast registry), ingest -> features -> train -> register
    (SQLite MLflow in `work`) -> deploy (artifact verified); every service started through the stack is
    stopped, the database dropped and Redis stopped at the end.

    The Feast variables are set in this process's environment while the stack lives (Feast and the
    serving processes read them from there) and restored afterwards.
    """
    from components.features.step import run_features
    from components.ingest.step import run_ingest
    from mlplatform.local.serving import prepare
    from tests.helpers import train_and_register
    from tests.integration.conftest import POSTGRES_URL, create_database, drop_database

    redis = PrivateRedis(work / "redis")
    db = None
    saved = {k: os.environ.get(k) for k in ("MLPLATFORM_FEAST_REDIS", "MLPLATFORM_FEAST_REGISTRY")}
    stack: Stack | None = None
    try:
        redis.start()
        db = create_database(POSTGRES_URL, "reliability")
        os.environ.update({"MLPLATFORM_FEAST_REDIS": redis.address, "MLPLATFORM_FEAST_REGISTRY": db.sqlalchemy_url})
        settings = PlatformSettings(work_dir=work, feast_config_file=CONFIG_FILE)
        run_ingest(work / "raw.parquet", n_transactions=n_transactions, n_days=30, seed=11)
        features = run_features(work / "raw.parquet", settings)
        train_and_register(settings, work, max_epochs)
        deployed = prepare(settings, "champion")
        stack = Stack(
            settings=settings,
            work=work,
            redis=redis,
            raw=pd.read_parquet(work / "raw.parquet"),
            model_dir=Path(deployed.storage_uri),
            version=deployed.model_version,
            features_end_unix_s=pd.Timestamp(features.materialized_until).timestamp(),
        )
        yield stack
    finally:
        for service in stack.services if stack else []:
            service.stop()
        redis.stop()
        if db is not None:
            drop_database(POSTGRES_URL, db.name)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
