"""The fast path of the v1 predict route (serving/fastpath.py) answers exactly as KServe's own route does, and takes
only the requests it can answer alike: every case is sent to the same app with and without it and compared."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from kserve import Model
from kserve.errors import InvalidInput
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer

from serving.app import prepare_app
from serving.errors import InvalidRequest, ServiceUnavailable
from serving.settings import ServingSettings


class Echo(Model):
    """Answers, or fails as the request's `kind` says."""

    def __init__(self) -> None:
        super().__init__("fraud-detector")
        self.ready = True

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        kind = payload.get("kind") if isinstance(payload, dict) else "list"
        if kind == "invalid":
            raise InvalidRequest("instances[0].amount", "must be positive")
        if kind == "unavailable":
            raise ServiceUnavailable("feature_store", "online feature lookup failed (timeout)")
        if kind == "kserve_invalid":
            raise InvalidInput("not a transaction")
        if kind == "crash":
            raise RuntimeError("boom")
        return {"predictions": [0.25], "request_id": (headers or {}).get("x-request-id"), "kind": kind}


def _app(model: Echo, fast: bool) -> tuple[FastAPI, list[int]]:
    """KServe's REST app for `model` as serving/app.py prepares it, counting the calls to KServe's dataplane."""
    repository = ModelRepository()
    repository.update(model)
    calls: list[int] = []

    class CountingDataPlane(DataPlane):
        async def infer(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return await super().infer(*args, **kwargs)

    dataplane = CountingDataPlane(model_registry=repository)
    server = RESTServer("kserve.model_server:app", dataplane, ModelRepositoryExtension(repository), http_port=0)
    app = FastAPI()
    prepare_app(ServingSettings(), app, model=model if fast else None)
    server._register_endpoints(app)  # as ModelServer.start does, after prepare_app
    server._add_exception_handlers(app)
    return app, calls


CASES: list[tuple[str, bytes, dict[str, str]]] = [
    ("ok", b'{"kind": "ok", "instances": [[1.0]]}', {"x-request-id": "r1"}),
    ("no content type", b'{"kind": "ok"}', {}),
    ("not json", b"{not json", {"content-type": "application/json"}),
    ("a list", b"[1, 2]", {"content-type": "application/json"}),
    ("platform 400", b'{"kind": "invalid"}', {"content-type": "application/json"}),
    ("platform 503", b'{"kind": "unavailable"}', {"content-type": "application/json"}),
    ("kserve 400", b'{"kind": "kserve_invalid"}', {"content-type": "application/json"}),
    ("crash", b'{"kind": "crash"}', {"content-type": "application/json"}),
    ("other content type", b"kind=ok", {"content-type": "text/plain"}),
    (
        "binary cloudevent",
        b'{"kind": "ok"}',
        {"content-type": "application/json", "ce-specversion": "1.0", "ce-id": "1", "ce-source": "t", "ce-type": "t"},
    ),
    (
        "structured cloudevent",
        b'{"specversion": "1.0", "id": "1", "source": "t", "type": "t", "time": "2026-12-03T00:00:00Z",'
        b' "data": {"kind": "ok"}}',
        {"content-type": "application/json"},
    ),
]
#: Cases the fast path must leave to KServe (CloudEvents, other content types).
DELEGATED = {"other content type", "binary cloudevent", "structured cloudevent"}


def _send(app: FastAPI, body: bytes, headers: dict[str, str], path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://serving") as client:
            return await client.post(path, content=body, headers=headers)

    return asyncio.run(go())


def _answer(response: httpx.Response) -> tuple[int, Any, str | None, str | None]:
    return (
        response.status_code,
        response.json(),
        response.headers.get("content-type"),
        response.headers.get("retry-after"),
    )


@pytest.mark.parametrize(("case", "body", "headers"), CASES, ids=[c[0] for c in CASES])
def test_fast_path_answers_like_kserves_route(case: str, body: bytes, headers: dict[str, str]) -> None:
    path = "/v1/models/fraud-detector:predict"
    kserve, kserve_calls = _app(Echo(), fast=False)
    fast, fast_calls = _app(Echo(), fast=True)
    expected = _send(kserve, body, headers, path)
    answered = _send(fast, body, headers, path)
    assert _answer(answered) == _answer(expected)
    assert bool(kserve_calls) == (case != "not json")  # KServe reads the body before its dataplane runs the model
    assert bool(fast_calls) == (case in DELEGATED)


def test_fast_path_leaves_a_model_not_ready_and_other_routes_to_kserve() -> None:
    model = Echo()
    model.ready = False
    fast, calls = _app(model, fast=True)
    not_ready = _send(fast, b'{"kind": "ok"}', {}, "/v1/models/fraud-detector:predict")
    assert not_ready.status_code == 503 and "not ready" in not_ready.json()["error"]
    model.ready = True
    assert _send(fast, b'{"kind": "ok"}', {}, "/v1/models/other:predict").status_code == 404
    v2 = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}'
    _send(fast, v2, {"content-type": "application/json"}, "/v2/models/fraud-detector/infer")
    assert calls == [1]  # the v2 protocol is KServe's
