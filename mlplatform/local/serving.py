"""The local stand-in for an InferenceService: predictor and transformer as two processes on localhost, the
transformer calling the predictor over the collocated tensor hop (or HTTP)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mlplatform.deploy.artifact import prepare_local, resolve
from mlplatform.deploy.cluster import DeployResult, render_manifest, serving_env
from mlplatform.errors import MlPlatformError
from mlplatform.http import LOOPBACK, local_address
from mlplatform.settings import PROJECT_ROOT, PlatformSettings


def prepare(
    settings: PlatformSettings, alias: str = "champion", canary_traffic_percent: int | None = None
) -> DeployResult:
    """Deploy locally: download and verify the version behind `alias` into the work dir (`serve_local` serves it).

    A pipeline step cannot hold long-running servers, so the local pipeline's deploy step stops here and
    `mlplatform serve` (the end of `make run`) serves the prepared copy.

    Raises:
        ConfigError: Unknown alias.
        ArtifactInvalid: The artifact cannot be served.
    """
    version = resolve(settings, alias)
    model_dir = prepare_local(settings, version)  # verified before anything gets traffic
    manifest = render_manifest(settings, version, model_dir.as_uri(), canary_traffic_percent)
    return DeployResult(version.name, version.version, alias, "local", version.source, str(model_dir), manifest)


def serve_local(
    settings: PlatformSettings, alias: str = "champion", port: int = 0, role: str = "stable"
) -> tuple[DeployResult, Any]:
    """Deploy locally and start the transformer (on `port`, 0 = any free one) and the predictor.

    Returns:
        The deployment and the running `LocalService` (stop it, or use it as a context manager).
    """

    result = prepare(settings, alias)
    service = start_local(
        Path(result.storage_uri),
        model_name=settings.registered_model_name,
        env=serving_env(settings, result.model_version, role),
        log_dir=settings.resolved_work_dir / "logs",
        transformer_port=port,
    )
    return result, service


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServingStartError(MlPlatformError):
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
        host: Where a client on this machine reaches both processes (`client_host`).
    """

    model_name: str
    transformer_port: int
    predictor_port: int
    predictor_grpc_port: int
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    host: str = LOOPBACK
    socket_dir: Path | None = None  # the tensor hop's folder when this service made it (removed by stop)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.transformer_port}"

    @property
    def predictor_url(self) -> str:
        return f"http://{self.host}:{self.predictor_port}"

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
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        return codes

    def __enter__(self) -> LocalService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus `extra`, with the project on PYTHONPATH.

    Prometheus multiprocess directories are not inherited: importing feast points them at a temporary folder
    of the importing process (deleted when it exits), and each server keeps its own metrics.
    """
    env = {k: v for k, v in os.environ.items() if k not in _MULTIPROC_VARS}
    env.update(extra or {})
    root = str(PROJECT_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


_MULTIPROC_VARS = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR", "prometheus_multiproc_dir")


#: The serving processes' listen address (`ServingSettings.host`; mlplatform does not import serving).
SERVING_HOST_VARIABLE = "MLPLATFORM_SERVING_HOST"
#: The collocated predictor's tensor hop (`ServingSettings.predictor_socket`).
SOCKET_VARIABLE = "MLPLATFORM_SERVING_PREDICTOR_SOCKET"


def client_host(env: dict[str, str]) -> str:
    """Where a client on this machine reaches serving processes started with `env`: the address they bind
    (`MLPLATFORM_SERVING_HOST`, loopback unless set), or loopback for a wildcard address."""
    host = local_address(env.get(SERVING_HOST_VARIABLE) or LOOPBACK)
    return f"[{host}]" if ":" in host else host


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
    predictor_module: str = "serving.predictor",
    tensor_hop: bool = True,
) -> LocalService:
    """Start predictor and transformer processes and wait until both report the model ready.

    Like the collocated pod (ADR 0016) the transformer calls the predictor over its tensor hop, a Unix socket in a
    private temporary folder (`MLPLATFORM_SERVING_PREDICTOR_SOCKET`, unless `env` names one); `tensor_hop=False`
    calls it over HTTP, as the separate-pod layout does.

    Args:
        model_dir: The model artifact folder (what KServe would mount at /mnt/models).
        model_name: Name on the endpoint paths.
        env: MLPLATFORM_SERVING_* (and Feast) variables for both processes, added to this process's.
        log_dir: Folder for the processes' output.
        transformer_port: 0 picks a free port.
        predictor_port: 0 picks a free port.
        predictor_grpc_port: 0 picks a free port.
        timeout_seconds: Readiness deadline per process.
        predictor_module: Module run as the predictor (tests substitute a deliberately broken one).
        tensor_hop: Transformer to predictor over the tensor hop (True) or HTTP.

    Raises:
        ServingStartError: When a process exits early or does not become ready.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    full_env = _child_env(env)
    socket_dir = None
    if not tensor_hop:
        full_env.pop(SOCKET_VARIABLE, None)
    elif not full_env.get(SOCKET_VARIABLE):  # a short path: the hop takes at most 103 bytes (sockaddr_un)
        socket_dir = Path(tempfile.mkdtemp(prefix="mlplatform-hop-"))  # owner-only
        full_env[SOCKET_VARIABLE] = str(socket_dir / "predictor.sock")
    service = LocalService(
        model_name=model_name,
        transformer_port=transformer_port or free_port(),
        predictor_port=predictor_port or free_port(),
        predictor_grpc_port=predictor_grpc_port or free_port(),
        log_dir=log_dir,
        host=client_host(full_env),
        socket_dir=socket_dir,
    )
    commands = {
        "predictor": [
            "-m",
            predictor_module,
            f"--model_dir={model_dir}",
            f"--grpc_port={service.predictor_grpc_port}",
            f"--http_port={service.predictor_port}",
        ],
        "transformer": [
            "-m",
            "serving.transformer",
            f"--predictor_host={service.host}:{service.predictor_port}",
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
            url = f"http://{service.host}:{port}/v2/models/{model_name}/ready"
            _wait_ready(service.processes[role], url, log_dir / f"{role}.log", timeout_seconds)
    except BaseException:
        service.stop(timeout_seconds=10)
        raise
    return service


@dataclass
class LocalSplitter:
    """A running `mlplatform.local.splitter` process; read and change the split through its /traffic route."""

    model_name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def predict_url(self) -> str:
        """The v1 predict endpoint clients call."""
        return f"{self.url}/v1/models/{self.model_name}:predict"

    def split(self) -> dict[str, Any]:
        """The split in force (a `mlplatform.local.splitter.TrafficSplit` document)."""
        response = httpx.get(f"{self.url}/traffic", timeout=5.0)
        response.raise_for_status()
        return dict(response.json())

    def set_split(self, split: dict[str, Any]) -> dict[str, Any]:
        """Replace the split; returns it as the splitter now applies it.

        Raises:
            ValueError: The splitter rejected the document (its message names the field).
        """
        response = httpx.put(f"{self.url}/traffic", json=split, timeout=5.0)
        if response.status_code == 400:
            raise ValueError(response.json()["error"])
        response.raise_for_status()
        return dict(response.json())

    def stop(self, timeout_seconds: float = 15.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> LocalSplitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_splitter(
    model_name: str,
    stable_url: str,
    stable_version: str,
    *,
    log_dir: Path,
    port: int = 0,
    canary_url: str | None = None,
    canary_version: str | None = None,
    canary_percent: int = 0,
    sticky_header: str | None = None,
    timeout_seconds: float = 60.0,
) -> LocalSplitter:
    """Start the traffic splitter in front of local services and wait until it answers.

    Raises:
        ServingStartError: When it exits early or does not become ready.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [
        sys.executable,
        "-m",
        "mlplatform.local.splitter",
        f"--http_port={port}",
        f"--model_name={model_name}",
        f"--stable_url={stable_url}",
        f"--stable_version={stable_version}",
        f"--canary_percent={canary_percent}",
    ]
    if canary_url:
        args += [f"--canary_url={canary_url}", f"--canary_version={canary_version}"]
    if sticky_header:
        args.append(f"--sticky_header={sticky_header}")
    env = _child_env()
    log = log_dir / "splitter.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    splitter = LocalSplitter(model_name, port, proc, log)
    try:
        _wait_ready(proc, f"{splitter.url}/healthz", log, timeout_seconds)
    except BaseException:
        splitter.stop()
        raise
    return splitter
