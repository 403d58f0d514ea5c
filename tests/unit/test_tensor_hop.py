"""The collocated tensor hop (serving/tensor_hop.py): the predictor's answers over the Unix socket equal its v1
route's, bad rows and failures are answered (not dropped) and counted as over HTTP, a request past its deadline
never receives another request's answer, and a predictor that goes away is a clear error, then reconnected; each on
Python's event loop and on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from mlplatform import metric_names as names
from mlplatform.features.compute import MODEL_FEATURES
from mlplatform.training.model import ModelConfig, build_model, save_model
from serving.metrics import ServingMetrics
from serving.predictor import FraudPredictor
from serving.settings import ServingSettings
from serving.tensor_hop import ERROR, INVALID, OK, HopError, TensorClient, TensorServer

N = len(MODEL_FEATURES)
LABELS = {"model_name": "fraud-detector", "model_version": "4", "role": "canary", "component": "predictor"}


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def event_loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test on both loops a serving process may run (ServingSettings.event_loop): uvloop's transports are not
    asyncio's classes, and the hop's protocols must not care."""
    before = asyncio.get_event_loop_policy()
    if request.param == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield request.param
    finally:
        asyncio.set_event_loop_policy(before)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short folder (sockaddr_un holds 107 bytes; pytest's tmp_path can be longer)."""
    with tempfile.TemporaryDirectory(prefix="hop-") as folder:
        yield Path(folder)


class Running:
    """A `TensorServer` in its own thread and event loop, as the predictor process runs it."""

    def __init__(self, server: TensorServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(server.run(),), daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.monotonic() + 10
        while True:  # listening once it says hello (a stale socket file may be there before)
            with socket.socket(socket.AF_UNIX) as probe, contextlib.suppress(OSError):
                probe.settimeout(1)
                probe.connect(str(self.server.path))
                if probe.recv(4) == b"MLH1":
                    return self
            assert time.monotonic() < deadline, "the tensor server did not start"
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        self.thread.join(10)
        assert not self.thread.is_alive()


def _predictor(tmp_path: Path) -> tuple[FraudPredictor, CollectorRegistry]:
    config = ModelConfig(feature_names=list(MODEL_FEATURES), hidden_units=[8])
    model_dir = save_model(build_model(config), config, tmp_path / "model")
    registry = CollectorRegistry()
    settings = ServingSettings(model_version="4", role="canary", max_batch_size=16)
    predictor = FraudPredictor("fraud-detector", model_dir, settings, ServingMetrics(*LABELS.values(), registry))
    predictor.load()
    return predictor, registry


def _server(path: Path, predictor: FraudPredictor) -> TensorServer:
    hello = {"model_version": "4", "role": "canary", "threshold": 0.3, "n_features": N}
    return TensorServer(path, predictor.score_request, hello, predictor.settings.max_batch_size)


def _count(registry: CollectorRegistry, outcome: str) -> float:
    return registry.get_sample_value(names.REQUESTS, {**LABELS, "outcome": outcome}) or 0.0


def test_the_hop_answers_what_the_v1_route_answers_and_counts_each_request_once(
    tmp_path: Path, socket_dir: Path
) -> None:
    predictor, registry = _predictor(tmp_path)
    rows = np.random.default_rng(0).normal(size=(5, N)) * 3
    over_http = predictor.predict({"instances": rows.tolist()})
    with Running(_server(socket_dir / "p.sock", predictor)):

        async def call() -> Any:
            client = TensorClient(socket_dir / "p.sock")
            try:
                return await client.score(rows, timeout=5), client.hello
            finally:
                await client.close()

        answer, hello = asyncio.run(call())
    assert answer.status == OK
    assert answer.scores is not None and answer.fallback is not None
    assert answer.scores.tolist() == over_http["predictions"]  # float32 on the wire, as the v1 route parses JSON
    assert answer.fallback.tolist() == over_http["fallback"]
    assert hello == {"model_version": "4", "role": "canary", "threshold": 0.3, "n_features": N}
    assert _count(registry, "ok") == 2
    assert not (socket_dir / "p.sock").exists()  # removed at stop


def test_bad_rows_and_a_failing_model_are_answered_with_the_reason_and_the_connection_stays_usable(
    tmp_path: Path, socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor, registry = _predictor(tmp_path)
    calls = {"n": 0}
    score = predictor.score

    def failing_once(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("weights on fire")
        return score(rows)

    monkeypatch.setattr(predictor, "score", failing_once)
    with Running(_server(socket_dir / "p.sock", predictor)):

        async def calls_in_a_row() -> list[Any]:
            client = TensorClient(socket_dir / "p.sock")
            results: list[Any] = []
            # a transformer of another feature set, a NaN, more rows than max_batch_size (not a frame of ours)
            for rows in (np.ones((1, N - 1)), np.full((1, N), np.nan), np.ones((17, N))):
                try:
                    results.append(await client.score(rows, timeout=5))
                except HopError as exc:
                    results.append(exc)
            await client.close()
            return results

        async def then_healthy() -> list[Any]:
            client = TensorClient(socket_dir / "p.sock")
            try:
                return [await client.score(np.ones((1, N)), timeout=5), await client.score(np.ones((2, N)), timeout=5)]
            finally:
                await client.close()

        first = asyncio.run(calls_in_a_row())
        second = asyncio.run(then_healthy())
    assert first[0].status == INVALID and f"must have shape [n, {N}], got [1, {N - 1}]" in first[0].message
    assert first[1].status == INVALID and "finite" in first[1].message
    assert isinstance(first[2], HopError)  # an oversize frame closes the connection instead of being read
    assert second[0].status == ERROR and "weights on fire" in second[0].message
    assert second[1].status == OK and len(second[1].scores) == 2
    assert (_count(registry, "invalid"), _count(registry, "error"), _count(registry, "ok")) == (2, 1, 1)


def test_a_request_past_its_deadline_never_gets_another_requests_answer(
    tmp_path: Path, socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor, _ = _predictor(tmp_path)
    score = predictor.score

    def slow_for_large(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(rows) == 3:
            time.sleep(0.5)
        return score(rows)

    monkeypatch.setattr(predictor, "score", slow_for_large)
    with Running(_server(socket_dir / "p.sock", predictor)):

        async def scenario() -> tuple[BaseException | None, Any]:
            client = TensorClient(socket_dir / "p.sock")
            late: BaseException | None = None
            try:
                await client.score(np.ones((3, N)), timeout=0.1)
            except TimeoutError as exc:
                late = exc
            try:
                return late, await client.score(np.ones((1, N)), timeout=5)  # answered after the late one
            finally:
                await client.close()

        timed_out, next_answer = asyncio.run(scenario())
    assert isinstance(timed_out, TimeoutError)
    assert next_answer.status == OK and len(next_answer.scores) == 1


def test_a_missing_or_vanished_predictor_is_a_clear_error_and_the_client_reconnects(
    tmp_path: Path, socket_dir: Path
) -> None:
    predictor, _ = _predictor(tmp_path)
    path = socket_dir / "p.sock"

    async def one(client: TensorClient) -> Any:
        try:
            return await client.score(np.ones((1, N)), timeout=2)
        except HopError as exc:
            return exc

    async def scenario() -> list[Any]:
        client = TensorClient(path)
        results = [await one(client)]  # nothing listens yet
        with Running(_server(path, predictor)):
            results.append(await one(client))
        results.append(await one(client))  # the predictor went away after answering
        with Running(_server(path, predictor)):
            results.append(await one(client))  # a new predictor process: reconnected
        await client.close()
        return results

    missing, first, gone, again = asyncio.run(scenario())
    assert isinstance(missing, HopError) and "FileNotFoundError" in str(missing)
    assert first.status == OK and again.status == OK
    assert isinstance(gone, HopError)


def test_the_socket_is_owner_only_a_stale_file_is_replaced_and_foreign_frames_close_the_connection(
    tmp_path: Path, socket_dir: Path
) -> None:
    predictor, _ = _predictor(tmp_path)
    path = socket_dir / "p.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # what a killed predictor leaves behind
    stale.close()
    with Running(_server(path, predictor)):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(str(path))
            raw.settimeout(5)
            head = raw.recv(8)
            assert head[:4] == b"MLH1"
            raw.recv(struct.unpack("<I", head[4:])[0])
            raw.sendall(b"GET / HTTP/1.1\r\n\r\n")  # not a frame of the hop
            assert raw.recv(64) == b""  # closed, nothing answered


def test_a_socket_path_too_long_for_sockaddr_un_is_refused_naming_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPLATFORM_SERVING_PREDICTOR_SOCKET", "/" + "s" * 120)
    with pytest.raises(ValueError, match="at most 103 bytes"):
        ServingSettings()
