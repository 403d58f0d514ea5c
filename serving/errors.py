"""Typed serving errors, each meaning one HTTP status, and their handlers on KServe's FastAPI app."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.responses import ORJSONResponse
from kserve.errors import InvalidInput


class InvalidRequest(InvalidInput):
    """400: the request is malformed; `field` names what was wrong (e.g. `instances[3].amount`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Unauthorized(Exception):
    """401: a bearer token is required and was missing or wrong."""


class ServiceUnavailable(Exception):
    """503: a dependency (predictor, online store) cannot answer now; the client may retry.

    Args:
        dependency: What failed (predictor, feature_store).
        message: What happened, for the client.
        retry_after_seconds: Suggested wait before retrying.
    """

    def __init__(self, dependency: str, message: str, retry_after_seconds: int = 1) -> None:
        super().__init__(f"{dependency} unavailable: {message}")
        self.dependency = dependency
        self.retry_after_seconds = retry_after_seconds


async def _invalid_request(_: Request, exc: Exception) -> ORJSONResponse:
    assert isinstance(exc, InvalidRequest)
    return ORJSONResponse(
        status_code=HTTPStatus.BAD_REQUEST, content={"error": str(exc), "field": exc.field, "detail": exc.message}
    )


async def _unauthorized(_: Request, exc: Exception) -> ORJSONResponse:
    return ORJSONResponse(
        status_code=HTTPStatus.UNAUTHORIZED, content={"error": str(exc)}, headers={"WWW-Authenticate": "Bearer"}
    )


async def _unavailable(_: Request, exc: Exception) -> ORJSONResponse:
    assert isinstance(exc, ServiceUnavailable)
    return ORJSONResponse(
        status_code=HTTPStatus.SERVICE_UNAVAILABLE,
        content={"error": str(exc), "dependency": exc.dependency},
        headers={"Retry-After": str(exc.retry_after_seconds)},
    )


def install_handlers(app: FastAPI) -> None:
    """Map the errors above to their statuses on `app` (KServe's app; its own handlers stay)."""
    app.add_exception_handler(InvalidRequest, _invalid_request)
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(ServiceUnavailable, _unavailable)
