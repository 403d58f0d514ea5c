"""Where canary evidence comes from: the Prometheus HTTP API, or the serving processes' /metrics directly.

Both sources answer the same question for one side of a traffic step (a version in a role): what
happened since the step began, as a `mlplatform.canary.StepEvidence`. Prometheus is the source on a
cluster and locally when a Prometheus server scrapes the local services; without one, the local backend
reads the predictors' /metrics at the step's start and again at each analysis, and takes differences —
the same counters and histograms, the same arithmetic Prometheus' `increase` and `histogram_quantile` do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mlplatform import promql
from mlplatform.canary import StepEvidence


class EvidenceUnavailable(Exception):
    """The evidence source could not be read (Prometheus or a /metrics endpoint down): the step waits."""


class EvidenceSource(Protocol):
    """Evidence of both sides of a traffic step since it began."""

    def begin_step(self) -> None:
        """Mark the start of a traffic step (a new split is in force from now)."""

    def collect(self, version: str, role: str) -> StepEvidence:
        """Evidence of `version` serving as `role` since the step began.

        Raises:
            EvidenceUnavailable: The source cannot be read now.
        """


class PrometheusEvidence:
    """Evidence from the Prometheus HTTP API (`mlplatform.promql`), over the time since the step began.

    Args:
        base_url: Prometheus root URL.
        model_name: Served model name.
        max_window_seconds: Longest window analysed (a step longer than that is judged on its latest part).
        scrape_interval_seconds: The scrape interval; the window is at least two of them, so `increase` has two
            samples to work with.
        timeout_seconds: Deadline of each query.
    """

    def __init__(
        self,
        base_url: str,
        model_name: str,
        max_window_seconds: int,
        scrape_interval_seconds: float = 15.0,
        timeout_seconds: float = 10.0,
    ) -> None:
        self.base_url = base_url
        self.model_name = model_name
        self.max_window_seconds = max_window_seconds
        self.min_window_seconds = max(1, math.ceil(2 * scrape_interval_seconds))
        self.timeout_seconds = timeout_seconds
        self._started = time.time()

    def begin_step(self) -> None:
        self._started = time.time()

    def collect(self, version: str, role: str) -> StepEvidence:
        now = time.time()
        window = min(self.max_window_seconds, max(self.min_window_seconds, math.ceil(now - self._started)))
        try:
            return promql.collect_evidence(
                self.base_url, self.model_name, version, role, window, now, timeout_seconds=self.timeout_seconds
            )
        except promql.PrometheusUnavailable as exc:
            raise EvidenceUnavailable(str(exc)) from exc


#: A parsed scrape: (sample name, sorted label items) -> value.
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_scrape(text: str) -> Scrape:
    """The samples of a Prometheus text exposition."""
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def _matching(scrape: Scrape, name: str, labels: Mapping[str, str]) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        key: v for (n, key), v in scrape.items() if n == name and all(dict(key).get(k) == x for k, x in labels.items())
    }


def _increase(before: Scrape, after: Scrape, name: str, labels: Mapping[str, str]) -> dict[tuple, float]:
    """Per-series increase between two scrapes; a series that went down was reset (a restart): counted from 0."""
    old = _matching(before, name, labels)
    out = {}
    for key, v in _matching(after, name, labels).items():
        prev = old.get(key, 0.0)
        out[key] = v - prev if v >= prev else v
    return out


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' `histogram_quantile` on cumulative (le, count) pairs: linear within the bucket.

    Returns None without observations; the highest finite bound when the quantile falls in the +Inf bucket.
    """
    buckets = sorted(buckets)
    if not buckets or buckets[-1][0] != math.inf or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == math.inf:
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return None


class ScrapeEvidence:
    """Evidence read straight from the predictors' /metrics endpoints (the local fallback without Prometheus).

    Args:
        model_name: Served model name.
        endpoints: role (stable, canary) -> /metrics URL of that side's predictor (fallbacks the transformer
            counts are not seen this way; the predictor's non-finite and out-of-range ones are).
        timeout_seconds: Deadline of one scrape.
    """

    def __init__(self, model_name: str, endpoints: Mapping[str, str], timeout_seconds: float = 5.0) -> None:
        self.model_name = model_name
        self.endpoints = dict(endpoints)
        self.timeout_seconds = timeout_seconds
        self._baseline: dict[str, Scrape] = {}

    def _scrape(self, role: str) -> Scrape:
        url = self.endpoints[role]
        try:
            response = httpx.get(url, timeout=self.timeout_seconds)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise EvidenceUnavailable(f"scraping {url} failed ({type(exc).__name__}: {exc})") from exc
        return parse_scrape(response.text)

    def begin_step(self) -> None:
        self._baseline = {}
        for role in self.endpoints:
            try:
                self._baseline[role] = self._scrape(role)
            except EvidenceUnavailable:
                self._baseline[role] = {}  # counted from zero; collect() raises if it stays unreachable

    def collect(self, version: str, role: str) -> StepEvidence:
        after = self._scrape(role)
        before = self._baseline.get(role, {})
        side = {"model_name": self.model_name, "model_version": version, "role": role}
        analysed = {**side, "component": promql.ANALYSED_COMPONENT}
        requests = _increase(before, after, promql.REQUESTS, analysed)
        errors = sum(v for key, v in requests.items() if dict(key).get("outcome") in promql.SERVER_ERROR_OUTCOMES)
        latency: dict[float, float] = {}
        for key, v in _increase(
            before, after, promql.STAGE_SECONDS_BUCKET, {**analysed, "stage": promql.LATENCY_STAGE}
        ).items():
            le = float(dict(key)["le"])
            latency[le] = latency.get(le, 0.0) + v
        scores: dict[float, float] = {}
        for key, v in _increase(before, after, promql.SCORE_BUCKET, analysed).items():
            le = float(dict(key)["le"])
            scores[le] = scores.get(le, 0.0) + v
        return StepEvidence(
            requests=sum(requests.values()),
            errors=errors,
            p99_seconds=histogram_quantile(promql.LATENCY_QUANTILE, list(latency.items())),
            fallbacks=sum(_increase(before, after, promql.FALLBACKS, side).values()),
            score_buckets=tuple(sorted(scores.items())) if scores.get(math.inf, 0) > 0 else (),
        )
