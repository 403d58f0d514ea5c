"""The local stand-in for Knative's traffic split: a weighted, optionally sticky proxy in front of two services.

On a cluster KServe (Knative) splits an InferenceService's traffic between the previous and the latest
revision by `canaryTrafficPercent`. Locally each version runs as its own transformer + predictor pair
(`mlplatform.local.serving`) and this proxy splits between them the same way: a request goes to the canary with
probability `canary_percent` / 100, or, with a sticky header, by a stable hash of that header's value (the
same key always lands on the same side while the percentage stays the same, and a key that was on the
canary stays there when the percentage grows).

Routes: everything under /v1 and /v2 is proxied; GET /traffic shows the split, PUT /traffic changes it
(the rollout controller's knob), GET /metrics exposes the traffic metrics, GET /healthz answers 200.
Responses carry `x-mlplatform-model-version` and `x-mlplatform-role` naming the side that answered.
"""

from __future__ import annotations

import argparse
import hashlib
import random
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlplatform.processes import init_process

#: Headers a proxy must not forward (RFC 9110 7.6.1) plus those aiohttp recomputes.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
VERSION_HEADER = "x-mlplatform-model-version"
ROLE_HEADER = "x-mlplatform-role"


class Upstream(BaseModel):
    """One side of the split: a transformer endpoint and the version it serves."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://", description="Root URL of the side's transformer.")
    model_version: str = Field(min_length=1, description="Registry version it serves (a metric label).")


class TrafficSplit(BaseModel):
    """The split in force; PUT /traffic takes this document."""

    model_config = ConfigDict(extra="forbid")

    stable: Upstream
    canary: Upstream | None = None
    canary_percent: int = Field(default=0, ge=0, le=100, description="Share of requests sent to the canary.")
    sticky_header: str | None = Field(
        default=None, description="Request header whose value pins a client to one side; unset: random per request."
    )

    @model_validator(mode="after")
    def _canary_needs_upstream(self) -> TrafficSplit:
        if self.canary_percent > 0 and self.canary is None:
            raise ValueError("canary_percent > 0 needs a canary upstream")
        return self


def sticky_bucket(key: str) -> int:
    """A stable bucket 0..99 for a request key (the same in every process and run)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100


def choose(split: TrafficSplit, key: str | None, draw: float | None = None) -> str:
    """`canary` or `stable` for one request: by the key's bucket when sticky, else by a uniform draw."""
    if split.canary is None or split.canary_percent <= 0:
        return "stable"
    if split.canary_percent >= 100:
        return "canary"
    if key is not None:
        return "canary" if sticky_bucket(key) < split.canary_percent else "stable"
    return "canary" if (random.random() if draw is None else draw) * 100 < split.canary_percent else "stable"


class Splitter:
    """The proxy's state and handlers.

    Args:
        model_name: Served model name (a metric label).
        split: The initial split.
        upstream_timeout_seconds: Deadline of one proxied call; past it the client gets a 503.
    """

    def __init__(self, model_name: str, split: TrafficSplit, upstream_timeout_seconds: float = 10.0) -> None:
        self.model_name = model_name
        self.split = split
        self.timeout = aiohttp.ClientTimeout(total=upstream_timeout_seconds)
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mlplatform_splitter_requests_total",
            "Requests the local traffic splitter forwarded, by side and HTTP status class (2xx, 4xx, 5xx).",
            ("model_name", "model_version", "role", "code"),
            registry=self.registry,
        )
        self.share = Gauge(
            "mlplatform_splitter_traffic_percent",
            "Share of traffic (percent) the local splitter sends to each side.",
            ("model_name", "model_version", "role"),
            registry=self.registry,
        )
        self._session: aiohttp.ClientSession | None = None
        self._publish_share()

    def _publish_share(self) -> None:
        self.share.clear()
        s = self.split
        canary = s.canary_percent if s.canary is not None else 0
        self.share.labels(self.model_name, s.stable.model_version, "stable").set(100 - canary)
        if s.canary is not None:
            self.share.labels(self.model_name, s.canary.model_version, "canary").set(canary)

    async def start(self, app: web.Application) -> None:
        self._session = aiohttp.ClientSession(
            timeout=self.timeout, connector=aiohttp.TCPConnector(limit=256), auto_decompress=False
        )

    async def close(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def get_traffic(self, request: web.Request) -> web.Response:
        return web.json_response(self.split.model_dump())

    async def put_traffic(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body: must be a JSON TrafficSplit document")
        try:
            self.split = TrafficSplit.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "body"
            return _error(400, f"{field}: {first['msg']}")
        self._publish_share()
        return web.json_response(self.split.model_dump())

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        split = self.split  # one consistent view for this request, even if PUT /traffic lands meanwhile
        key = request.headers.get(split.sticky_header) if split.sticky_header else None
        role = choose(split, key)
        upstream = split.canary if role == "canary" and split.canary is not None else split.stable
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        identity = {VERSION_HEADER: upstream.model_version, ROLE_HEADER: role}
        assert self._session is not None
        try:
            async with self._session.request(
                request.method, upstream.url.rstrip("/") + request.rel_url.raw_path_qs, data=body, headers=headers
            ) as resp:
                payload = await resp.read()
                out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP}
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.requests.labels(self.model_name, upstream.model_version, role, "5xx").inc()
            return _error(
                503,
                f"{role} upstream {upstream.url} unavailable ({type(exc).__name__}); retry",
                headers={"Retry-After": "1", **identity},
            )
        self.requests.labels(self.model_name, upstream.model_version, role, f"{status // 100}xx").inc()
        return web.Response(status=status, body=payload, headers={**out, **identity})


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def make_app(splitter: Splitter) -> web.Application:
    """The aiohttp application of a splitter."""
    app = web.Application(client_max_size=16 * 1024 * 1024)  # the transformer answers oversize bodies itself
    app.on_startup.append(splitter.start)
    app.on_cleanup.append(splitter.close)
    app.router.add_get("/traffic", splitter.get_traffic)
    app.router.add_put("/traffic", splitter.put_traffic)
    app.router.add_get("/metrics", splitter.metrics)
    app.router.add_get("/healthz", splitter.healthz)
    app.router.add_route("*", "/v1/{tail:.*}", splitter.proxy)
    app.router.add_route("*", "/v2/{tail:.*}", splitter.proxy)
    app.router.add_route("*", "/v2", splitter.proxy)
    return app


def build_parser() -> argparse.ArgumentParser:
    """Flags in KServe's snake_case style."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--http_port", type=int, required=True)
    p.add_argument("--model_name", required=True)
    p.add_argument("--stable_url", required=True)
    p.add_argument("--stable_version", required=True)
    p.add_argument("--canary_url")
    p.add_argument("--canary_version")
    p.add_argument("--canary_percent", type=int, default=0)
    p.add_argument("--sticky_header")
    p.add_argument("--upstream_timeout_seconds", type=float, default=10.0)
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point: `python -m mlplatform.local.splitter --http_port 8080 --stable_url ...`."""
    init_process()
    args = build_parser().parse_args(argv)
    canary: dict[str, Any] | None = (
        {"url": args.canary_url, "model_version": args.canary_version} if args.canary_url else None
    )
    try:
        split = TrafficSplit(
            stable={"url": args.stable_url, "model_version": args.stable_version},
            canary=canary,
            canary_percent=args.canary_percent,
            sticky_header=args.sticky_header,
        )
    except ValidationError as exc:
        raise SystemExit(f"invalid traffic split: {exc}") from None
    app = make_app(Splitter(args.model_name, split, args.upstream_timeout_seconds))
    web.run_app(app, host="127.0.0.1", port=args.http_port, access_log=None, print=None, shutdown_timeout=10)


if __name__ == "__main__":
    main()
