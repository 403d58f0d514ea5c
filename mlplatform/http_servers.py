"""The platform's HTTP servers with the limits of `HttpServerSettings` (mlplatform/http.py): uvicorn's httptools
protocol with a cap on open connections and a size and time limit on request headers (`uvicorn_options`, for the
model servers and the webhook), and `MetricsServer`, /metrics and /healthz on a thread for the monitor
(mlplatform/monitoring/exporter.py) and the rollout controller (mlplatform/rollout/start.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mlplatform.http import (
    CLOSE_HEADERS,
    RETRY_HEADERS,
    Headers,
    HttpServerSettings,
    error_body,
    metrics_payload,
    send_error,
)

#: Pending connections the kernel queues for a `MetricsServer` before accepting (its default, 5, drops bursts).
LISTEN_BACKLOG = 1024


def raw_response(status: int, message: str, headers: Headers | None = None) -> bytes:
    """A whole HTTP/1.1 response with a JSON error, for servers answering outside an application (it closes)."""
    body = error_body(message)
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode(), b"content-type: application/json"]
    lines += [b"content-length: " + str(len(body)).encode(), b"connection: close"]
    lines += [name + b": " + value for name, value in headers or []]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _too_many_connections(limits: HttpServerSettings) -> str:
    return f"too many open connections (at most {limits.max_connections}); retry shortly"


def _headers_late(limits: HttpServerSettings) -> str:
    return f"request headers not received within {limits.header_timeout_seconds:g} s"


def _headers_too_large(limits: HttpServerSettings) -> str:
    return f"request line and headers larger than {limits.max_header_bytes} bytes"


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of `HttpServerSettings`: a cap on open connections, and a size
    and a time limit on each request's line and headers. Each refusal is a JSON error; the connection then closes.

    `uvicorn_options` makes the subclass that carries the settings (`limits`).
    """

    limits: ClassVar[HttpServerSettings]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True  # between a request's first byte (or the connection's start) and its headers
        self._header_bytes = 0  # received while awaiting headers
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, _too_many_connections(self.limits), RETRY_HEADERS)
            return
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:
            self._header_bytes += len(data)
            self._arm_header_deadline()
        super().data_received(data)
        if self._awaiting_headers and self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, _headers_too_large(self.limits))

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._cancel_header_deadline()
        head = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if head <= self.limits.max_header_bytes:
            super().on_headers_complete()
            return
        app, self.app = self.app, _refusal(431, _headers_too_large(self.limits))  # answered through uvicorn's own cycle
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_headers, self._header_bytes = True, 0  # what arrives next is the next request

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.limits.header_timeout_seconds, self._headers_late)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if not self._awaiting_headers or self.transport.is_closing():
            return
        if self._header_bytes == 0:  # connected and sent nothing: no request to answer
            self.transport.close()
            return
        self._refuse(408, _headers_late(self.limits))

    def _refuse(self, status: int, message: str, headers: Headers | None = None) -> None:
        """Answer `status` and close; only close when a response of an earlier (pipelined) request is under way."""
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(raw_response(status, message, headers or []))
        self.transport.close()


def _refusal(status: int, message: str) -> Any:
    """An ASGI app answering every request `status` with a JSON error, closing the connection."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send_error(send, status, message, CLOSE_HEADERS)

    return app


def uvicorn_options(settings: HttpServerSettings) -> dict[str, Any]:
    """`uvicorn.Config` keyword arguments applying `settings`: the address, and the protocol enforcing the limits."""
    protocol = type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": settings})
    return {"host": settings.host, "http": protocol}


class _HeadersLate(Exception):
    """The request line and headers did not arrive in time."""


class _HeadersTooLarge(Exception):
    """The request line and headers passed the size limit."""


class _HeaderReader(io.RawIOBase):
    """A socket's bytes, as long as they arrive before `deadline` (monotonic) and stay within `limit` bytes."""

    def __init__(self, sock: socket.socket, deadline: float, limit: int) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = deadline
        self.limit = limit
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _HeadersLate
        self.sock.settimeout(remaining)
        try:
            n = self.sock.recv_into(buffer, min(len(buffer), self.limit + 1 - self.received))
        except TimeoutError:
            raise _HeadersLate from None
        self.received += n
        if self.received > self.limit:
            raise _HeadersTooLarge
        return n


class _LimitedHTTPServer(ThreadingHTTPServer):
    """One thread per connection, at most `limits.max_connections` of them; one more is answered 503 and closed."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], limits: HttpServerSettings):
        self.limits = limits
        self._open = 0
        self._lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            full = self._open >= self.limits.max_connections
            self._open += 0 if full else 1
        if not full:
            super().process_request(request, client_address)
            return
        with contextlib.suppress(OSError):  # the client has gone already
            request.sendall(raw_response(503, _too_many_connections(self.limits), RETRY_HEADERS))
        self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._open -= 1


class MetricsServer:
    """/metrics (one registry) and /healthz on a background thread, for processes without a web app of their own.

    The limits of `HttpServerSettings` apply: a request's line and headers must arrive within the header timeout
    and the size limit (else 408 or 431), and the answer must be taken within the same time; connections beyond
    the cap are answered 503.

    Args:
        registry: The registry /metrics exposes.
        port: Port to bind; 0 picks a free one (see `start`'s result).
        limits: Address to bind and connection limits.
        healthy: What /healthz reports (200 when True, 503 with `unhealthy_message` otherwise).
        unhealthy_message: The 503 body.
        name: Thread name.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        port: int,
        limits: HttpServerSettings,
        healthy: Callable[[], bool] = lambda: True,
        unhealthy_message: str = "unhealthy",
        name: str = "metrics-http",
    ) -> None:
        self.registry = registry
        self.port = port
        self.limits = limits
        self.healthy = healthy
        self.unhealthy_message = unhealthy_message
        self.name = name
        self._server: _LimitedHTTPServer | None = None

    def start(self) -> int:
        """Start serving; returns the bound port."""
        self._server = _LimitedHTTPServer((self.limits.host, self.port), self._handler(), self.limits)
        threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True).start()
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(_LimitedHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, *metrics_payload(owner.registry))
                elif path == "/healthz":
                    ok = owner.healthy()
                    body = b"ok\n" if ok else owner.unhealthy_message.encode() + b"\n"
                    self._send(200 if ok else 503, body, "text/plain")
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

        return Handler


class _LimitedHandler(BaseHTTPRequestHandler):
    """Reads the request within the server's header limits (408, 431 otherwise) and answers within the same time."""

    server: _LimitedHTTPServer

    def setup(self) -> None:
        super().setup()
        limits = self.server.limits
        self.rfile.close()  # replaced by a reader that enforces the header limits
        deadline = time.monotonic() + limits.header_timeout_seconds
        self.rfile = io.BufferedReader(_HeaderReader(self.connection, deadline, limits.max_header_bytes))

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except _HeadersLate:
            self.close_connection = True
            if self.rfile.raw.received:  # type: ignore[attr-defined]  # else: connected and sent nothing
                self._refuse(408, _headers_late(self.server.limits))
        except _HeadersTooLarge:
            self.close_connection = True
            self._refuse(431, _headers_too_large(self.server.limits))

    def _refuse(self, status: int, message: str) -> None:
        self.connection.settimeout(self.server.limits.header_timeout_seconds)
        with contextlib.suppress(OSError):  # the client has gone already
            self.connection.sendall(raw_response(status, message))

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.connection.settimeout(self.server.limits.header_timeout_seconds)  # a reader that stalls is cut off
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return
