"""The local stand-in for an InferenceService: predictor and transformer as two processes on localhost."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServingStartError(RuntimeError):
    """A serving process exited or did not become ready."""


@dataclass
class LocalService:
    """A running local predictor + transformer pair; stop it with `stop()` (SIGTERM, then SIGKILL).

    Attributes:
        model_name: Name on the endpoint paths.
        transformer_port: HTTP port of the transformer (the endpoint clients call).
        predictor_port: HTTP port of the predictor.
        predictor_grpc_port: gRPC (Open Inference Protocol v2) port of the predictor.
        log_dir: Where each process's stdout/stderr go.
    """

    model_name: str
    transformer_port: int
    predictor_port: int
    predictor_grpc_port: int
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.transformer_port}"

    @property
    def predictor_url(self) -> str:
        return f"http://127.0.0.1:{self.predictor_port}"

    @property
    def predict_url(self) -> str:
        """The transformer's v1 predict endpoint."""
        return f"{self.url}/v1/models/{self.model_name}:predict"

    def stop(self, timeout_seconds: float = 30.0) -> dict[str, int | None]:
        """Graceful stop, transformer first (it drains and flushes the prediction log); returns exit codes."""
        codes: dict[str, int | None] = {}
        for role in ("transformer", "predictor"):
            proc = self.processes.get(role)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_seconds)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            codes[role] = proc.returncode
        return codes

    def __enter__(self) -> LocalService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise ServingStartError(f"{' '.join(map(str, proc.args))} exited with {proc.returncode}:\n{tail}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    proc.kill()
    raise ServingStartError(f"{url} not ready after {timeout_seconds:g}s (log: {log})")


def start_local(
    model_dir: Path,
    *,
    model_name: str = "fraud-detector",
    env: dict[str, str] | None = None,
    log_dir: Path,
    transformer_port: int = 0,
    predictor_port: int = 0,
    predictor_grpc_port: int = 0,
    timeout_seconds: float = 120.0,
) -> LocalService:
    """Start predictor and transformer processes and wait until both report the model ready.

    Args:
        model_dir: The model artifact folder (what KServe would mount at /mnt/models).
        model_name: Name on the endpoint paths.
        env: MLPLATFORM_SERVING_* (and Feast) variables for both processes, added to this process's.
        log_dir: Folder for the processes' output.
        transformer_port: 0 picks a free port.
        predictor_port: 0 picks a free port.
        predictor_grpc_port: 0 picks a free port.
        timeout_seconds: Readiness deadline per process.

    Raises:
        ServingStartError: When a process exits early or does not become ready.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    service = LocalService(
        model_name=model_name,
        transformer_port=transformer_port or free_port(),
        predictor_port=predictor_port or free_port(),
        predictor_grpc_port=predictor_grpc_port or free_port(),
        log_dir=log_dir,
    )
    full_env = {**os.environ, **(env or {})}
    root = str(Path(__file__).resolve().parents[1])
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, full_env.get("PYTHONPATH")) if p)
    commands = {
        "predictor": [
            "-m",
            "serving.predictor",
            f"--model_dir={model_dir}",
            f"--grpc_port={service.predictor_grpc_port}",
            f"--http_port={service.predictor_port}",
        ],
        "transformer": [
            "-m",
            "serving.transformer",
            f"--predictor_host=127.0.0.1:{service.predictor_port}",
            f"--http_port={service.transformer_port}",
            "--enable_grpc=false",
        ],
    }
    try:
        for role, args in commands.items():  # both start at once: the transformer needs no predictor to load
            log = log_dir / f"{role}.log"
            with log.open("ab") as out:
                service.processes[role] = subprocess.Popen(
                    [sys.executable, *args, f"--model_name={model_name}"],
                    env=full_env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
        for role, port in (("predictor", service.predictor_port), ("transformer", service.transformer_port)):
            url = f"http://127.0.0.1:{port}/v2/models/{model_name}/ready"
            _wait_ready(service.processes[role], url, log_dir / f"{role}.log", timeout_seconds)
    except BaseException:
        service.stop(timeout_seconds=10)
        raise
    return service
