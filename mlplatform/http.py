"""HTTP pieces every platform process shares: where it listens and what it tolerates from clients, the bearer-token
check, and the body and in-flight limits of ASGI apps (`Guard`).

The model servers (serving/app.py) and the alert webhook (mlplatform/feedback/webhook.py) put `Guard` in front of
their FastAPI apps; the servers themselves (uvicorn's protocol with the connection and header limits, and the
/metrics server of the monitor and the rollout controller) are in mlplatform/http_servers.py. Every process applies
the same `HttpServerSettings`: slow or stalled clients are cut off after a set time, oversize headers are refused,
and the open connections of a process are bounded, each refusal a JSON `{"error": ...}` naming the limit.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable
from typing import Any, Self

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field, model_validator

#: The address local processes bind unless told otherwise (containers set 0.0.0.0: Kubernetes reaches pod IPs).
LOOPBACK = "127.0.0.1"
Headers = list[tuple[bytes, bytes]]
#: Headers of an answer after which the server closes the connection, and of a refusal worth retrying.
CLOSE_HEADERS: Headers = [(b"connection", b"close")]
RETRY_HEADERS: Headers = [(b"retry-after", b"1")]


class HttpServerSettings(BaseModel):
    """Where an HTTP server listens and what it tolerates from a connection.

    Mixed into the settings of each process with an HTTP server (`ServingSettings`, `WebhookSettings`,
    `MonitorSettings`), so the variables carry that process's prefix, e.g. `MLPLATFORM_SERVING_MAX_CONNECTIONS`.
    """

    host: str = Field(
        default=LOOPBACK,
        description="Address to bind: loopback unless told otherwise; the serving image sets 0.0.0.0 (Kubernetes "
        "reaches containers on the pod's IP).",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="Open connections per process; one more is answered 503 (JSON error, Retry-After) and closed.",
    )
    header_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Longest a request line and its headers may take to arrive, counted from the connection's "
        "start or the request's first byte; then 408 and the connection is closed (one that sent nothing is "
        "closed silently).",
    )
    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        description="Largest request line plus headers; larger ones are answered 431 and the connection is closed.",
    )


class HttpBodySettings(HttpServerSettings):
    """`HttpServerSettings` plus what a server whose routes take a body tolerates from it (`Guard` applies these)."""

    body_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Longest a request body may take to arrive after its headers; then 408 and the connection is "
        "closed. A request counts against the in-flight limit only once its whole body has arrived.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest request body; a larger one is answered 413."
    )
    max_buffered_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Bytes of request bodies still arriving, over all connections (bodies are read whole before "
        "admission); one that would pass it is answered 503 with Retry-After. Bounds memory when many clients "
        "send bodies at once.",
    )

    @model_validator(mode="after")
    def _one_body_fits(self) -> Self:
        if self.max_buffered_body_bytes < self.max_body_bytes:
            raise ValueError("max_buffered_body_bytes must be at least max_body_bytes: the largest body must fit")
        return self


def local_address(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host` (loopback for the wildcard addresses)."""
    return LOOPBACK if host in ("0.0.0.0", "::", "") else host


def bearer_ok(authorization: bytes | str | None, token: bytes | None) -> bool:
    """Whether an Authorization header carries `token` (compared in constant time); True when no token is set."""
    if token is None:
        return True
    sent = authorization.encode() if isinstance(authorization, str) else (authorization or b"")
    return hmac.compare_digest(sent, b"Bearer " + token)


def metrics_payload(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The Prometheus text exposition of `registry` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def error_body(message: str) -> bytes:
    """The JSON body of every refusal: `{"error": message}`."""
    return json.dumps({"error": message}).encode()


async def send_error(send: Any, status: int, message: str, headers: Headers | None = None) -> None:
    """Answer an ASGI request `status` with a JSON `{"error": message}` body."""
    body = error_body(message)
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": start + (headers or [])})
    await send({"type": "http.response.body", "body": body})


def _has_body(headers: dict[bytes, bytes]) -> bool:
    return headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers


class Guard:
    """Pure ASGI middleware: 401 without the bearer token on protected paths (when a token is set); request bodies
    read whole before anything else (408 when one is late, 413 when it is too large); 503 + Retry-After when
    `max_inflight` protected requests already run.

    A request takes an in-flight slot only once its body has arrived, so clients that send slowly or stall hold
    a connection (bounded by `HttpServerSettings.max_connections` and the body timeout), never a slot.

    Args:
        app: The wrapped ASGI app.
        token: Required bearer token, or None for no check.
        protected: Whether a path needs the token and counts against `max_inflight` (health and metrics stay open).
        unauthorized_message: The 401 body's error, saying how to send the token.
        max_inflight: Protected requests in progress at once; None for no limit.
        on_reject: Called with the outcome (unauthorized, too_large, timeout, unavailable) of each request turned
            away.
        limits: Body timeout and sizes; None means the defaults.
        rewrite_scope: Adjusts a request's scope before anything else (e.g. a default Content-Type).
        check_headers: Returns a 400 message for headers the app cannot take (checked after the token), or None.
    """

    def __init__(
        self,
        app: Any,
        token: str | None,
        protected: Callable[[str], bool],
        unauthorized_message: str = "missing or wrong bearer token (Authorization: Bearer <token>)",
        max_inflight: int | None = None,
        on_reject: Callable[[str], None] | None = None,
        limits: HttpBodySettings | None = None,
        rewrite_scope: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        check_headers: Callable[[dict[bytes, bytes]], str | None] | None = None,
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.protected = protected
        self.unauthorized_message = unauthorized_message
        self.max_inflight = max_inflight
        self.on_reject = on_reject or (lambda outcome: None)
        self.limits = limits or HttpBodySettings()
        self.rewrite_scope = rewrite_scope
        self.check_headers = check_headers
        self.inflight = 0
        self.buffered = 0  # bytes of bodies being read, over all requests

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.rewrite_scope is not None:
            scope = self.rewrite_scope(scope)
        headers = dict(scope["headers"])
        protected = self.protected(scope["path"])
        if not await self._headers_pass(headers, protected, send):
            return
        if _has_body(headers):
            body = await self._read_body(receive, send)
            if body is None:
                return
            receive = _replay(body, receive)
        if not protected:
            await self.app(scope, receive, send)
            return
        if self.max_inflight is not None and self.inflight >= self.max_inflight:
            busy = f"overloaded: {self.inflight} requests in progress; retry shortly"
            await self._reject(send, "unavailable", 503, busy, RETRY_HEADERS)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1

    async def _headers_pass(self, headers: dict[bytes, bytes], protected: bool, send: Any) -> bool:
        """False once the request is answered: 401 (token), 400 (`check_headers`), 413 (declared length)."""
        if protected and not bearer_ok(headers.get(b"authorization"), self.token):
            await self._reject(send, "unauthorized", 401, self.unauthorized_message, [(b"www-authenticate", b"Bearer")])
            return False
        problem = self.check_headers(headers) if self.check_headers is not None else None
        if problem is not None:
            await send_error(send, 400, problem)
            return False
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limits.max_body_bytes):
            await self._reject(send, "too_large", 413, f"request body larger than {self.limits.max_body_bytes} bytes")
            return False
        return True

    async def _read_body(self, receive: Any, send: Any) -> bytes | None:
        """The whole body, or None once the request is answered (408, 413, 503) or the client has gone."""
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(self.limits.body_timeout_seconds):
                return await self._collect(receive, send, chunks)
        except TimeoutError:
            seconds = f"{self.limits.body_timeout_seconds:g}"
            await self._reject(send, "timeout", 408, f"request body not received within {seconds} s", CLOSE_HEADERS)
            return None
        finally:
            self.buffered -= sum(map(len, chunks))

    async def _collect(self, receive: Any, send: Any, chunks: list[bytes]) -> bytes | None:
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: nobody to answer
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                limit = self.limits.max_body_bytes
                await self._reject(send, "too_large", 413, f"request body larger than {limit} bytes", CLOSE_HEADERS)
                return None
            if self.buffered + len(chunk) > self.limits.max_buffered_body_bytes:
                total = self.limits.max_buffered_body_bytes
                busy = f"overloaded: {total} bytes of request bodies in transit; retry shortly"
                await self._reject(send, "unavailable", 503, busy, RETRY_HEADERS + CLOSE_HEADERS)
                return None
            self.buffered += len(chunk)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _reject(self, send: Any, outcome: str, status: int, message: str, headers: Headers | None = None) -> None:
        self.on_reject(outcome)
        await send_error(send, status, message, headers)


def _replay(body: bytes, receive: Any) -> Any:
    """A `receive` that hands the app `body` whole, then defers to the connection's (disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Any:
        return pending.pop() if pending else await receive()

    return replayed
