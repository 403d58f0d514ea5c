"""The guard in front of KServe's app: bearer token, body size limit, in-flight limit, JSON by default."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI, Request

from serving.app import GuardMiddleware

PREDICT = "/v1/models/m:predict"


def _app(
    token: str | None, max_inflight: int = 64, gate: asyncio.Event | None = None, entered: list[int] | None = None
) -> tuple[FastAPI, list[str]]:
    app = FastAPI()
    rejected: list[str] = []

    @app.post(PREDICT)
    async def predict(request: Request) -> dict[str, str]:
        if gate is not None:
            if entered is not None:
                entered.append(1)
            await gate.wait()
        return {"content_type": request.headers.get("content-type", "")}

    @app.get("/metrics")
    async def metrics() -> dict[str, str]:
        return {"ok": "yes"}

    app.add_middleware(GuardMiddleware, token=token, max_inflight=max_inflight, on_reject=rejected.append)
    return app, rejected


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def test_bearer_token_is_required_on_inference_routes_when_configured() -> None:
    async def run() -> None:
        app, rejected = _app("s3cret")
        async with _client(app) as c:
            assert (await c.post(PREDICT, json={})).status_code == 401
            wrong = await c.post(PREDICT, json={}, headers={"authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
            assert "bearer token" in wrong.json()["error"]
            ok = await c.post(PREDICT, json={}, headers={"authorization": "Bearer s3cret"})
            assert ok.status_code == 200
            assert (await c.get("/metrics")).status_code == 200  # health and metrics stay open
        assert rejected == ["unauthorized", "unauthorized"]

    asyncio.run(run())


def test_without_a_token_inference_routes_are_open() -> None:
    async def run() -> None:
        app, _ = _app(None)
        async with _client(app) as c:
            assert (await c.post(PREDICT, json={})).status_code == 200

    asyncio.run(run())


def test_oversize_bodies_get_413_before_the_app_reads_them() -> None:
    async def run() -> None:
        app, _ = _app(None)
        async with _client(app) as c:
            r = await c.post(PREDICT, content=b"x" * (1024 * 1024 + 1), headers={"content-type": "application/json"})
            assert r.status_code == 413 and "larger than" in r.json()["error"]

    asyncio.run(run())


def test_requests_beyond_the_inflight_limit_are_shed_with_503_and_retry_after() -> None:
    async def run() -> None:
        gate, entered = asyncio.Event(), []
        app, rejected = _app(None, max_inflight=2, gate=gate, entered=entered)
        async with _client(app) as c:
            held = [asyncio.create_task(c.post(PREDICT, json={})) for _ in range(2)]
            while len(entered) < 2:  # both held requests are inside the app, waiting on the gate
                await asyncio.sleep(0)
            shed = await c.post(PREDICT, json={})
            assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
            gate.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
            assert (await c.post(PREDICT, json={})).status_code == 200  # capacity is back
        assert "unavailable" in rejected

    asyncio.run(run())


@pytest.mark.parametrize(
    ("headers", "expected"), [({}, "application/json"), ({"content-type": "text/plain"}, "text/plain")]
)
def test_requests_without_content_type_are_read_as_json(headers: dict[str, str], expected: str) -> None:
    async def run() -> None:
        app, _ = _app(None)
        async with _client(app) as c:
            r = await c.post(PREDICT, content=b"{}", headers=headers)
            assert r.json()["content_type"] == expected

    asyncio.run(run())
