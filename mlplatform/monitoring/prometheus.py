"""A small client of the Prometheus HTTP API (instant queries) and its errors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from mlplatform.errors import MlPlatformError


class PrometheusError(MlPlatformError):
    """Prometheus could not answer a query."""


class PrometheusUnavailable(PrometheusError):
    """Prometheus is unreachable, too slow or failing: the evidence is missing, so a rollout step waits."""


class PrometheusQueryError(PrometheusError):
    """Prometheus rejected a query (bad PromQL or parameters): a bug in this module, not missing evidence."""


@dataclass(frozen=True)
class Sample:
    """One element of an instant vector."""

    labels: dict[str, str]
    value: float


def _unix(at: datetime | float) -> float:
    return at.timestamp() if isinstance(at, datetime) else float(at)


def query(
    base_url: str,
    promql: str,
    at: datetime | float,
    *,
    timeout_seconds: float = 10.0,
    client: httpx.Client | None = None,
) -> list[Sample]:
    """Evaluate an instant query through the Prometheus HTTP API (`GET /api/v1/query`).

    Args:
        base_url: Prometheus root, e.g. http://prometheus.monitoring:9090.
        promql: An expression whose result is an instant vector.
        at: Evaluation time (timezone-aware datetime or Unix seconds).
        timeout_seconds: Deadline of the HTTP call; Prometheus gets it as its evaluation timeout too.
        client: A client to reuse; a new one is opened and closed otherwise.

    Returns:
        The vector's samples; empty when no series matched.

    Raises:
        PrometheusUnavailable: No connection, no answer in time, a 5xx or an answer that is not Prometheus'.
        PrometheusQueryError: Prometheus rejected the query (4xx, or a result that is not a vector).
    """
    url = base_url.rstrip("/") + "/api/v1/query"
    params = {"query": promql, "time": f"{_unix(at):.3f}", "timeout": f"{timeout_seconds:g}s"}
    own = client is None
    http = client or httpx.Client(timeout=httpx.Timeout(timeout_seconds))
    try:
        response = http.get(url, params=params, timeout=httpx.Timeout(timeout_seconds))
    except httpx.HTTPError as exc:
        raise PrometheusUnavailable(
            f"Prometheus at {base_url} did not answer within {timeout_seconds:g} s ({type(exc).__name__}: {exc}); "
            "check that it runs and that the URL points at it"
        ) from exc
    finally:
        if own:
            http.close()
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 500 or not isinstance(body, dict) or "status" not in body:
        detail = body.get("error") if isinstance(body, dict) and body.get("error") else response.text[:200]
        raise PrometheusUnavailable(f"{url} answered HTTP {response.status_code}: {detail}")
    if body["status"] != "success":
        raise PrometheusQueryError(
            f"Prometheus rejected {promql!r} (HTTP {response.status_code}): "
            f"{body.get('errorType')}: {body.get('error')}"
        )
    data = body.get("data", {})
    if data.get("resultType") != "vector":
        raise PrometheusQueryError(f"{promql!r} returned a {data.get('resultType')}, expected an instant vector")
    return [Sample(dict(r["metric"]), float(r["value"][1])) for r in data["result"]]
