"""The hot route of a serving process without FastAPI's routing and KServe's dataplane: `POST
/v1/models/<name>:predict` with a JSON body, answered by the same model hooks and the same error handlers.

Profiling the full path (benchmarks/profile_serving.py, docs/adr/0016-serving-layout.md) showed a quarter of the
predictor's CPU and a sixth of the transformer's in FastAPI's and Starlette's request handling and KServe's REST
dataplane (route matching, parameter resolution, CloudEvent checks, response classes), around a model call that
is itself cheap. This ASGI layer answers the one route every request takes, in both processes, by calling the
model as KServe's dataplane does (`await model(body, headers)`: preprocess, validate, predict, postprocess, with
KServe's stage histograms), and maps failures through the app's own exception handlers, so statuses and bodies
are KServe's and the platform's (serving/errors.py). Anything else, including CloudEvents, other content types,
a model not ready yet and the v2 protocol, goes on to KServe's app unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import JSON_HEADERS
from kserve.utils.utils import is_structured_cloudevent

Scope = dict[str, Any]


class FastPath:
    """Pure ASGI middleware answering `POST /v1/models/<model.name>:predict` (JSON) directly.

    Args:
        app: The wrapped ASGI app (KServe's, with its exception handlers registered).
        model: The served model (a `kserve.Model`).
        handlers: The app's `exception_handlers` (exception class -> `(request, exc) -> Response`), read when a
            request fails: KServe registers its own when the server starts. Looked up by the exception's class
            hierarchy, as Starlette does.
    """

    def __init__(self, app: Any, model: Any, handlers: dict[Any, Any]) -> None:
        self.app = app
        self.model = model
        self.handlers = handlers
        self.path = f"/v1/models/{model.name}:predict"

    def _takes(self, scope: Scope, headers: dict[str, str]) -> bool:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            return False
        if not self.model.ready or any(k.startswith("ce-") for k in headers):
            return False
        content_type = headers.get("content-type")
        return content_type is None or content_type in JSON_HEADERS

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if not self._takes(scope, headers):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            await self._failed(scope, receive, send, InvalidInput(f"Unrecognized request format: {exc}"))
            return
        if isinstance(payload, dict) and is_structured_cloudevent(payload):
            await self.app(scope, _replay(body), send)  # KServe unwraps CloudEvents
            return
        try:
            response, response_headers = await self.model(payload, headers=headers)
            content = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
        except Exception as exc:  # every failure is answered by the app's handler for it, as KServe would
            await self._failed(scope, receive, send, exc)
            return
        extra = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in (response_headers or {}).items()]
        start = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": start + extra})
        await send({"type": "http.response.body", "body": content})

    async def _failed(self, scope: Scope, receive: Any, send: Any, exc: Exception) -> None:
        from starlette.requests import Request

        handler = next((self.handlers[c] for c in type(exc).__mro__ if c in self.handlers), None)
        if handler is None:
            raise exc
        response = await handler(Request(scope, receive), exc)
        await response(scope, receive, send)


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Any:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
