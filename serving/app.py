"""What both serving processes add to KServe's model server: error statuses, the platform's guard (bearer auth, body
limits, an in-flight limit: mlplatform.http.Guard), and the address and connection limits of the settings."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from kserve import Model, ModelServer, model_server

from mlplatform.http import Guard, HttpBodySettings
from mlplatform.http_servers import uvicorn_options
from serving.errors import install_handlers
from serving.fastpath import FastPath
from serving.settings import ServingSettings
from serving.tensor_hop import TensorServer

#: Paths that run a model and so need the token when one is set (health and metrics stay open).
_PROTECTED_PREFIXES = ("/v1/models/", "/v2/models/")


def _is_inference(path: str) -> bool:
    return path.startswith(_PROTECTED_PREFIXES) and (path.endswith(":predict") or path.endswith("/infer"))


def _json_by_default(scope: dict[str, Any]) -> dict[str, Any]:
    """Open Inference Protocol: without Inference-Header-Content-Length a POST body is JSON (tritonclient sends no
    Content-Type); KServe would otherwise read it as binary tensor data."""
    headers = dict(scope["headers"])
    if (
        scope["method"] == "POST"
        and b"content-type" not in headers
        and b"inference-header-content-length" not in headers
    ):
        return {**scope, "headers": [*scope["headers"], (b"content-type", b"application/json")]}
    return scope


def _binary_header_is_a_count(headers: dict[bytes, bytes]) -> str | None:
    length = headers.get(b"inference-header-content-length")
    if length is not None and not length.isdigit():
        return "Inference-Header-Content-Length must be a byte count (digits only)"
    return None


class GuardMiddleware(Guard):
    """The platform's `Guard` in front of KServe's app: token and in-flight limit on the inference routes, the body
    limit everywhere, JSON by default (Open Inference Protocol).

    Args:
        app: The wrapped ASGI app.
        token: Required bearer token, or None for no check.
        max_inflight: Inference requests in progress at once.
        on_reject: Called with the request outcome (unauthorized, unavailable) of each inference request turned
            away; an oversize or late body is not an inference outcome.
        limits: Body timeout and sizes; None means the defaults.
    """

    def __init__(
        self,
        app: Any,
        token: str | None,
        max_inflight: int = 64,
        on_reject: Callable[[str], None] | None = None,
        limits: HttpBodySettings | None = None,
    ) -> None:
        def counted(outcome: str) -> None:
            if on_reject is not None and outcome in ("unauthorized", "unavailable"):
                on_reject(outcome)

        super().__init__(
            app,
            token,
            protected=_is_inference,
            max_inflight=max_inflight,
            on_reject=counted,
            limits=limits,
            rewrite_scope=_json_by_default,
            check_headers=_binary_header_is_a_count,
        )


def prepare_app(
    settings: ServingSettings,
    app: FastAPI | None = None,
    on_reject: Callable[[str], None] | None = None,
    model: Model | None = None,
) -> FastAPI:
    """Install the error handlers and the guard on KServe's app (before `ModelServer.start`), and with `model` the
    fast path of its v1 predict route (serving/fastpath.py) behind the guard."""
    app = app or model_server.app
    install_handlers(app)
    app.add_exception_handler(RequestValidationError, _not_protocol)
    _answer_unserved_routes(app)
    if model is not None:  # added first, so it runs inside the guard (the last added middleware is the outermost)
        app.add_middleware(FastPath, model=model, handlers=app.exception_handlers)
    token = settings.auth_token.get_secret_value() if settings.auth_token else None
    app.add_middleware(
        GuardMiddleware, token=token, max_inflight=settings.max_inflight_requests, on_reject=on_reject, limits=settings
    )
    return app


async def _not_protocol(_: Any, exc: Exception) -> Any:
    """422 naming where the body breaks the protocol, without echoing the offending values (FastAPI's own
    handler echoes them, which fails with a 500 on NaN/Infinity and copies request values into answers)."""
    from fastapi.responses import ORJSONResponse

    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()[:10]]
    where = ".".join(errors[0]["loc"]) if errors else "body"
    return ORJSONResponse(
        status_code=422, content={"error": f"{where}: {errors[0]['msg'] if errors else 'invalid'}", "detail": errors}
    )


def _answer_unserved_routes(app: FastAPI) -> None:
    """404 with a JSON error for protocol routes this server does not serve (KServe answers them 501).

    One endpoint serves one model version (its version is in the metadata), so the per-version v2
    routes do not exist here, and there is no explainer. Registered before KServe's own routes, so
    these match first.
    """
    from fastapi.responses import ORJSONResponse

    async def no_versions(model_name: str, model_version: str) -> ORJSONResponse:
        return ORJSONResponse(
            status_code=404,
            content={"error": f"versioned routes are not served; use /v2/models/{model_name[:64]} (one version each)"},
        )

    async def no_explainer(model_name: str) -> ORJSONResponse:
        return ORJSONResponse(status_code=404, content={"error": "this model has no explainer"})

    base = "/v2/models/{model_name}/versions/{model_version}"
    app.add_api_route(base, no_versions, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{base}/ready", no_versions, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{base}/infer", no_versions, methods=["POST"], include_in_schema=False)
    app.add_api_route("/v1/models/{model_name}:explain", no_explainer, methods=["POST"], include_in_schema=False)


def serve(
    model: Model, args: argparse.Namespace, settings: ServingSettings, tensor_hop: TensorServer | None = None
) -> None:
    """Run KServe's model server for `model` (loaded) with our app additions, until SIGTERM/SIGINT; with
    `tensor_hop` (the predictor's, collocated) that server too, in the same event loop, stopped with the others."""
    metrics = getattr(model, "metrics", None)
    prepare_app(settings, on_reject=metrics.request if metrics is not None else None, model=model)
    _listen_as_configured(settings)
    server = _ModelServer(
        tensor_hop,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=args.enable_grpc,
        enable_latency_logging=args.enable_latency_logging and settings.access_log,
    )
    if not settings.access_log:  # after ModelServer, which (re)configures logging
        for name in ("uvicorn.access", "kserve.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # KServe's TimingMiddleware only feeds the kserve.trace lines silenced above, but resolves the route
        # name of every request by matching all routes: skip installing it in this (our own) process.
        from kserve.protocol.rest.server import RESTServer

        RESTServer._add_middlewares = lambda self, app: None
    use_event_loop(settings.event_loop)
    server.start([model])


def use_event_loop(kind: str) -> None:
    """Make this process's event loops `kind` (uvloop or asyncio) before KServe's server starts.

    KServe's `ModelServer.start` configures `asyncio.get_event_loop()` and then runs in `asyncio.run`'s loop, both
    made by the policy; uvloop's policy makes no loop implicitly, so one is set here (as Python's would make it).
    """
    if kind == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())


class _ModelServer(ModelServer):
    """KServe's model server, also running the tensor hop's server (if any) until the others stop."""

    def __init__(self, tensor_hop: TensorServer | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tensor_hop = tensor_hop
        if tensor_hop is not None:
            self.servers.append(tensor_hop.run())

    def stop(self, sig: int) -> None:
        super().stop(sig)
        if self.tensor_hop is not None:
            self.tensor_hop.stop()


def _listen_as_configured(settings: ServingSettings) -> None:
    """KServe binds its REST server to 0.0.0.0 with uvicorn's defaults and its gRPC server to [::]: both get the
    address of `settings` instead, and the REST server the connection and header limits (mlplatform.http).

    ModelServer builds both servers inside `start`, so the classes it uses are replaced beforehand (one worker:
    `--workers` > 1 would use KServe's multi-process server, which this does not reach).
    """
    from kserve.protocol.grpc import server as grpc_server
    from kserve.protocol.rest.server import RESTServer

    class LimitedRESTServer(RESTServer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for name, value in uvicorn_options(settings).items():
                setattr(self.config, name, value)

    model_server.RESTServer = LimitedRESTServer  # type: ignore[misc]
    grpc_server.aio = _GrpcOn(settings.host, grpc_server.aio)


class _GrpcOn:
    """`grpc.aio` as KServe's gRPC server module sees it, with servers listening on `host` instead of [::]."""

    def __init__(self, host: str, aio: Any) -> None:
        self._address = "[::]" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
        self._aio = aio

    def server(self, *args: Any, **kwargs: Any) -> Any:
        server = self._aio.server(*args, **kwargs)
        add_port = server.add_insecure_port
        server.add_insecure_port = lambda address: add_port(address.replace("[::]", self._address, 1))
        return server
