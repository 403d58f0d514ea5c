"""What every platform HTTP server tolerates from its clients (mlplatform.http): where it listens by default, and
the guard's body handling (read whole before admission, 408 when late, bounded in size and in total)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from mlplatform.feedback.webhook import WebhookSettings
from mlplatform.http import LOOPBACK, Guard, HttpBodySettings, HttpServerSettings
from mlplatform.local.serving import SERVING_HOST_VARIABLE, LocalService, client_host
from mlplatform.monitoring.settings import MonitorSettings
from serving.settings import ServingSettings

SERVING_IMAGE = Path(__file__).resolve().parents[2] / "images" / "serving.Dockerfile"


@pytest.mark.parametrize(
    ("settings", "prefix"), [(ServingSettings, "SERVING"), (WebhookSettings, "WEBHOOK"), (MonitorSettings, "MONITOR")]
)
def test_each_process_listens_on_loopback_unless_its_setting_says_otherwise(
    settings: type[HttpServerSettings], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HOST", "MAX_CONNECTIONS"):
        monkeypatch.delenv(f"MLPLATFORM_{prefix}_{name}", raising=False)
    assert settings().host == LOOPBACK == "127.0.0.1"
    monkeypatch.setenv(f"MLPLATFORM_{prefix}_HOST", "0.0.0.0")
    monkeypatch.setenv(f"MLPLATFORM_{prefix}_MAX_CONNECTIONS", "7")
    assert (settings().host, settings().max_connections) == ("0.0.0.0", 7)


@pytest.mark.parametrize(
    ("bound", "reached"),
    [(None, "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("::", "127.0.0.1"), ("10.1.2.3", "10.1.2.3"), ("::1", "[::1]")],
)
def test_local_serving_is_reached_where_its_processes_listen(bound: str | None, reached: str) -> None:
    """`mlplatform serve` checks readiness, points the transformer at the predictor and prints its URL at the address
    the processes bind (MLPLATFORM_SERVING_HOST), not always at loopback."""
    env = {SERVING_HOST_VARIABLE: bound} if bound else {}
    host = client_host(env)
    service = LocalService("m", 8080, 8085, 8086, Path("."), host=host)
    assert host == reached
    assert service.predict_url == f"http://{reached}:8080/v1/models/m:predict"
    assert service.predictor_url == f"http://{reached}:8085"
    assert f"{ServingSettings.model_config['env_prefix']}HOST" == SERVING_HOST_VARIABLE


def test_the_serving_image_sets_every_process_to_listen_on_all_interfaces() -> None:
    text = SERVING_IMAGE.read_text()
    for prefix in ("SERVING", "WEBHOOK", "MONITOR"):
        assert f"MLPLATFORM_{prefix}_HOST=0.0.0.0" in text


def _scope(length: int) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/p", "headers": [(b"content-length", str(length).encode())]}


class Client:
    """One request's side of the ASGI conversation: the body in parts (then, optionally, nothing), the answer."""

    def __init__(self, *parts: bytes, stall: bool = False) -> None:
        self.parts = list(parts)
        self.stall = stall
        self.waiting = asyncio.Event()  # set once the guard waits for a part that does not come
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.parts:
            part = self.parts.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(self.parts) or self.stall}
        self.waiting.set()
        await asyncio.Event().wait()  # never: a client that stopped sending
        raise AssertionError("unreachable")

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def error(self) -> str:
        return str(json.loads(self.sent[1]["body"])["error"])


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": message["body"]})


def _guard(rejected: list[str], **limits: Any) -> Guard:
    return Guard(
        _echo, None, lambda path: True, max_inflight=1, on_reject=rejected.append, limits=HttpBodySettings(**limits)
    )


def test_the_bodies_in_transit_budget_holds_at_least_one_largest_body() -> None:
    with pytest.raises(ValueError, match="max_buffered_body_bytes must be at least max_body_bytes"):
        HttpBodySettings(max_body_bytes=4096, max_buffered_body_bytes=2048)


def test_a_request_takes_an_inflight_slot_only_once_its_body_has_arrived() -> None:
    async def run() -> None:
        guard = _guard([])
        slow, good = Client(b"12345", stall=True), Client(b"0123456789")
        held = asyncio.create_task(guard(_scope(10), slow.receive, slow.send))
        await slow.waiting.wait()
        assert guard.inflight == 0
        await guard(_scope(10), good.receive, good.send)  # the one slot is free
        assert good.status == 200 and good.sent[1]["body"] == b"0123456789"
        held.cancel()

    asyncio.run(run())


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_is_closed() -> None:
    async def run() -> None:
        rejected: list[str] = []
        late = Client(b"12345", stall=True)
        await _guard(rejected, body_timeout_seconds=0.05)(_scope(10), late.receive, late.send)
        assert late.status == 408 and late.headers[b"connection"] == b"close"
        assert late.error == "request body not received within 0.05 s"
        assert rejected == ["timeout"]

    asyncio.run(run())


def test_a_chunked_body_past_the_limit_gets_413_and_the_connection_is_closed() -> None:
    async def run() -> None:
        rejected: list[str] = []
        big = Client(b"x" * 1000, b"x" * 1000)
        scope = {**_scope(0), "headers": [(b"transfer-encoding", b"chunked")]}
        await _guard(rejected, max_body_bytes=1024)(scope, big.receive, big.send)
        assert big.status == 413 and big.headers[b"connection"] == b"close"
        assert big.error == "request body larger than 1024 bytes" and rejected == ["too_large"]

    asyncio.run(run())


def test_bodies_in_transit_past_the_budget_get_503_with_retry_after() -> None:
    async def run() -> None:
        rejected: list[str] = []
        guard = _guard(rejected, max_body_bytes=1024, max_buffered_body_bytes=1024)
        slow, second = Client(b"x" * 1000, stall=True), Client(b"y" * 100)
        held = asyncio.create_task(guard(_scope(1024), slow.receive, slow.send))
        await slow.waiting.wait()
        await guard(_scope(100), second.receive, second.send)
        assert second.status == 503 and second.headers[b"retry-after"] == b"1"
        assert "bytes of request bodies in transit" in second.error and rejected == ["unavailable"]
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
        assert guard.buffered == 0  # a request that ends gives its bytes back

    asyncio.run(run())
