"""Every PromQL query canary analysis runs, and evidence collection (client: mlplatform.monitoring.prometheus)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import datetime

import httpx

from mlplatform.metric_names import (
    ANALYSED_COMPONENT,
    FALLBACKS,
    LATENCY_STAGE,
    REQUESTS,
    SCORE_BUCKET,
    SERVER_ERROR_OUTCOMES,
    STAGE_SECONDS_BUCKET,
)
from mlplatform.monitoring.prometheus import PrometheusQueryError, Sample, query
from mlplatform.rollout.analysis import LATENCY_QUANTILE, Snapshot, StepEvidence


def _quote(value: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def selector(model_name: str, model_version: str, role: str, component: str | None = None, **matchers: str) -> str:
    """Label matchers `{model_name="...",...}` of one version in one role; `component` None matches every one.

    Extra `matchers` are exact matches, or regular expressions when the value is given as `~"..."`.
    """
    labels = {"model_name": model_name, "model_version": model_version, "role": role}
    if component is not None:
        labels["component"] = component
    parts = [f"{k}={_quote(v)}" for k, v in labels.items()]
    for k, v in matchers.items():
        parts.append(f"{k}=~{_quote(v[1:])}" if v.startswith("~") else f"{k}={_quote(v)}")
    return "{" + ",".join(parts) + "}"


@dataclass(frozen=True)
class StepQueries:
    """The instant queries of one side (canary or stable) of an analysis step, evaluated at the window's end.

    Attributes:
        requests: Requests answered in the window, every outcome (one sample; none if never scraped).
        errors: Requests answered with a server error in the window.
        p99_seconds: p99 of the predictor's latency (stage predict) in the window; NaN without observations.
        fallbacks: Scores replaced by the fallback in the window, every component (the transformer falls back
            when features are unavailable, the predictor on non-finite or out-of-range scores); none if no
            fallback ever happened (the series is created by the first one).
        score_buckets: Cumulative score histogram of the window, one sample per `le`.
    """

    requests: str
    errors: str
    p99_seconds: str
    fallbacks: str
    score_buckets: str


def step_queries(model_name: str, model_version: str, role: str, window_seconds: int) -> StepQueries:
    """The PromQL of one side of an analysis step over a window of `window_seconds` ending at the query time."""
    w = f"[{int(window_seconds)}s]"
    front = selector(model_name, model_version, role, ANALYSED_COMPONENT)
    errors = selector(
        model_name, model_version, role, ANALYSED_COMPONENT, outcome="~" + "|".join(SERVER_ERROR_OUTCOMES)
    )
    latency = selector(model_name, model_version, role, ANALYSED_COMPONENT, stage=LATENCY_STAGE)
    return StepQueries(
        requests=f"sum(increase({REQUESTS}{front}{w}))",
        errors=f"sum(increase({REQUESTS}{errors}{w}))",
        p99_seconds=f"histogram_quantile({LATENCY_QUANTILE}, "
        f"sum by (le) (increase({STAGE_SECONDS_BUCKET}{latency}{w})))",
        fallbacks=f"sum(increase({FALLBACKS}{selector(model_name, model_version, role)}{w}))",
        score_buckets=f"sum by (le) (increase({SCORE_BUCKET}{front}{w}))",
    )


def _one(samples: list[Sample]) -> float | None:
    """The value of a single-sample vector (an aggregation without `by`); None when empty or NaN."""
    if not samples:
        return None
    if len(samples) > 1:
        raise PrometheusQueryError(f"expected one sample, got {len(samples)}: {samples[:3]}")
    return None if math.isnan(samples[0].value) else samples[0].value


def collect_evidence(
    base_url: str,
    model_name: str,
    version: str,
    role: str,
    window_seconds: int,
    at: datetime | float,
    *,
    timeout_seconds: float = 10.0,
) -> StepEvidence:
    """Evidence of one side (canary or stable) over the window ending at `at`, from Prometheus.

    A series that was never scraped counts as nothing happened: no requests (so analysis waits), no errors,
    no fallbacks. Precision and recall are not in Prometheus (labels arrive later) and stay None.

    Raises:
        PrometheusUnavailable: Prometheus could not be asked; the step has no evidence and waits.
    """
    q = step_queries(model_name, version, role, window_seconds)
    with httpx.Client(timeout=httpx.Timeout(timeout_seconds)) as client:
        results = {
            f.name: query(base_url, getattr(q, f.name), at, timeout_seconds=timeout_seconds, client=client)
            for f in fields(q)
        }
    buckets = sorted((float(s.labels["le"]), s.value) for s in results["score_buckets"])
    return StepEvidence(
        requests=_one(results["requests"]) or 0.0,
        errors=_one(results["errors"]) or 0.0,
        p99_seconds=_one(results["p99_seconds"]),
        fallbacks=_one(results["fallbacks"]) or 0.0,
        score_buckets=tuple(buckets),
    )


@dataclass(frozen=True)
class SnapshotQueries:
    """Instant sums of one side's counters (no range, no extrapolation): evaluated at a step's start and at
    each analysis, their differences are the step's exact evidence (`mlplatform.rollout.analysis.between`)."""

    requests: str
    errors: str
    fallbacks: str
    latency_buckets: str
    score_buckets: str


def snapshot_queries(model_name: str, model_version: str, role: str) -> SnapshotQueries:
    """The PromQL of one side's counter snapshot."""
    front = selector(model_name, model_version, role, ANALYSED_COMPONENT)
    errors = selector(
        model_name, model_version, role, ANALYSED_COMPONENT, outcome="~" + "|".join(SERVER_ERROR_OUTCOMES)
    )
    latency = selector(model_name, model_version, role, ANALYSED_COMPONENT, stage=LATENCY_STAGE)
    return SnapshotQueries(
        requests=f"sum({REQUESTS}{front})",
        errors=f"sum({REQUESTS}{errors})",
        fallbacks=f"sum({FALLBACKS}{selector(model_name, model_version, role)})",
        latency_buckets=f"sum by (le) ({STAGE_SECONDS_BUCKET}{latency})",
        score_buckets=f"sum by (le) ({SCORE_BUCKET}{front})",
    )


def snapshot(
    base_url: str, model_name: str, version: str, role: str, at: datetime | float, *, timeout_seconds: float = 10.0
) -> Snapshot:
    """One side's counters as Prometheus has them at `at` (series never scraped count as 0).

    Raises:
        PrometheusUnavailable: Prometheus could not be asked.
    """
    q = snapshot_queries(model_name, version, role)
    with httpx.Client(timeout=httpx.Timeout(timeout_seconds)) as client:
        r = {
            f.name: query(base_url, getattr(q, f.name), at, timeout_seconds=timeout_seconds, client=client)
            for f in fields(q)
        }
    return Snapshot(
        requests=_one(r["requests"]) or 0.0,
        errors=_one(r["errors"]) or 0.0,
        fallbacks=_one(r["fallbacks"]) or 0.0,
        latency={float(x.labels["le"]): x.value for x in r["latency_buckets"]},
        scores={float(x.labels["le"]): x.value for x in r["score_buckets"]},
    )
