"""HTTP pieces every platform process shares: the bearer-token check, the body limit, and a /metrics server.

The model servers (serving/app.py) and the alert webhook (mlplatform/feedback/webhook.py) put `Guard` in front
of their FastAPI apps; the monitor (mlplatform/monitoring/exporter.py) and the rollout controller
(mlplatform/rollout/start.py) serve their registries with `MetricsServer`.
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

#: Largest request body accepted by default (bytes).
MAX_BODY_BYTES = 1024 * 1024


def bearer_ok(authorization: bytes | str | None, token: bytes | None) -> bool:
    """Whether an Authorization header carries `token` (compared in constant time); True when no token is set."""
    if token is None:
        return True
    sent = authorization.encode() if isinstance(authorization, str) else (authorization or b"")
    return hmac.compare_digest(sent, b"Bearer " + token)


def metrics_payload(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The Prometheus text exposition of `registry` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


class BodyTooLarge(ValueError):
    """A body sent without Content-Length (chunked) grew past the limit; answered 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")


class Guard:
    """Pure ASGI middleware: 401 without the bearer token on protected paths (when a token is set), 413 for
    oversize bodies (declared or chunked), 503 + Retry-After when `max_inflight` protected requests already run.

    Args:
        app: The wrapped ASGI app.
        token: Required bearer token, or None for no check.
        protected: Whether a path needs the token and counts against `max_inflight` (health and metrics stay open).
        unauthorized_message: The 401 body's error, saying how to send the token.
        max_inflight: Protected requests in progress at once; None for no limit.
        on_reject: Called with the outcome (unauthorized, too_large, unavailable) of each request turned away.
        max_body_bytes: Largest accepted body.
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
        max_body_bytes: int = MAX_BODY_BYTES,
        rewrite_scope: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        check_headers: Callable[[dict[bytes, bytes]], str | None] | None = None,
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.protected = protected
        self.unauthorized_message = unauthorized_message
        self.max_inflight = max_inflight
        self.on_reject = on_reject or (lambda outcome: None)
        self.max_body_bytes = max_body_bytes
        self.rewrite_scope = rewrite_scope
        self.check_headers = check_headers
        self.inflight = 0

    @staticmethod
    async def reject(send: Any, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        """Answer `status` with a JSON `{"error": message}` body."""
        body = json.dumps({"error": message}).encode()
        start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": start + (headers or [])})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.rewrite_scope is not None:
            scope = self.rewrite_scope(scope)
        headers = dict(scope["headers"])
        protected = self.protected(scope["path"])
        if protected and not bearer_ok(headers.get(b"authorization"), self.token):
            self.on_reject("unauthorized")
            await self.reject(send, 401, self.unauthorized_message, [(b"www-authenticate", b"Bearer")])
            return
        problem = self.check_headers(headers) if self.check_headers is not None else None
        if problem is not None:
            await self.reject(send, 400, problem)
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            self.on_reject("too_large")
            await self.reject(send, 413, f"request body larger than {self.max_body_bytes} bytes")
            return
        if protected and self.max_inflight is not None and self.inflight >= self.max_inflight:
            self.on_reject("unavailable")
            await self.reject(
                send, 503, f"overloaded: {self.inflight} requests in progress; retry shortly", [(b"retry-after", b"1")]
            )
            return
        if length is None and scope["method"] in ("POST", "PUT"):
            receive = self._limited(receive)
        if not protected:
            await self.app(scope, receive, send)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1

    def _limited(self, receive: Any) -> Any:
        seen = 0
        limit = self.max_body_bytes

        async def wrapped() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return wrapped


class MetricsServer:
    """/metrics (one registry) and /healthz on a background thread, for processes without a web app of their own.

    Args:
        registry: The registry /metrics exposes.
        host: Address to bind.
        port: Port to bind; 0 picks a free one (see `start`'s result).
        healthy: What /healthz reports (200 when True, 503 with `unhealthy_message` otherwise).
        unhealthy_message: The 503 body.
        name: Thread name.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        healthy: Callable[[], bool] = lambda: True,
        unhealthy_message: str = "unhealthy",
        name: str = "metrics-http",
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.healthy = healthy
        self.unhealthy_message = unhealthy_message
        self.name = name
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> int:
        """Start serving; returns the bound port."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
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

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True).start()
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
