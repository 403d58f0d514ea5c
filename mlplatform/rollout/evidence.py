"""Where canary evidence comes from: the Prometheus HTTP API, or the serving processes' /metrics directly.

Both sources answer the same question for one side of a traffic step (a version in a role): what
happened since the step began, as a `mlplatform.rollout.analysis.StepEvidence`. Both take the side's counters
at the step's start and at each analysis and difference them (`mlplatform.rollout.analysis`): Prometheus
(on a cluster, and locally when a Prometheus server scrapes the local services) answers with instant
sums; without one, the local backend reads the predictors' /metrics directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mlplatform import metric_names
from mlplatform.errors import MlPlatformError
from mlplatform.monitoring.prometheus import PrometheusUnavailable
from mlplatform.rollout import promql
from mlplatform.rollout.analysis import Snapshot, StepEvidence, between, was_reset


class EvidenceUnavailable(MlPlatformError):
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
    """Evidence from the Prometheus HTTP API: each side's counters at the step's start and now, differenced.

    Instant sums, not `increase(...[window])`: over windows of a few scrapes, `increase` extrapolates each
    histogram bucket separately and distorts small histograms (an identical canary once showed a score PSI
    of 0.8). When a counter went down meanwhile (a pod restarted or left), the step falls back to
    `increase` over the time since it began, which handles resets.

    Args:
        base_url: Prometheus root URL.
        model_name: Served model name.
        max_window_seconds: Longest window analysed (a step longer than that is judged on its latest part).
        scrape_interval_seconds: The scrape interval; the fallback window is at least two of them.
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
        self._baselines: dict[tuple[str, str], Snapshot] = {}

    def begin_step(self) -> None:
        self._started = time.time()
        self._baselines = {}

    def _snapshot(self, version: str, role: str, at: float) -> Snapshot:
        return promql.snapshot(self.base_url, self.model_name, version, role, at, timeout_seconds=self.timeout_seconds)

    def collect(self, version: str, role: str) -> StepEvidence:
        now = time.time()
        try:
            start = max(self._started, now - self.max_window_seconds)
            if start > self._started:  # a long step: judged on its latest window
                before = self._snapshot(version, role, start)
            else:
                if (version, role) not in self._baselines:
                    self._baselines[(version, role)] = self._snapshot(version, role, self._started)
                before = self._baselines[(version, role)]
            after = self._snapshot(version, role, now)
            if not was_reset(before, after):
                return between(before, after)
            window = min(self.max_window_seconds, max(self.min_window_seconds, math.ceil(now - self._started)))
            return promql.collect_evidence(
                self.base_url, self.model_name, version, role, window, now, timeout_seconds=self.timeout_seconds
            )
        except PrometheusUnavailable as exc:
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


def scrape_snapshot(scrape: Scrape, model_name: str, version: str, role: str) -> Snapshot:
    """One side's counters in a scrape, summed like `mlplatform.rollout.promql.snapshot_queries` sums them."""
    side = {"model_name": model_name, "model_version": version, "role": role}
    analysed = {**side, "component": metric_names.ANALYSED_COMPONENT}

    def matching(name: str, labels: Mapping[str, str]) -> list[tuple[dict[str, str], float]]:
        return [
            (dict(key), v)
            for (n, key), v in scrape.items()
            if n == name and all(dict(key).get(k) == x for k, x in labels.items())
        ]

    def by_le(name: str, labels: Mapping[str, str]) -> dict[float, float]:
        out: dict[float, float] = {}
        for lbl, v in matching(name, labels):
            out[float(lbl["le"])] = out.get(float(lbl["le"]), 0.0) + v
        return out

    requests = matching(metric_names.REQUESTS, analysed)
    return Snapshot(
        requests=sum(v for _, v in requests),
        errors=sum(v for lbl, v in requests if lbl.get("outcome") in metric_names.SERVER_ERROR_OUTCOMES),
        fallbacks=sum(v for _, v in matching(metric_names.FALLBACKS, side)),
        latency=by_le(metric_names.STAGE_SECONDS_BUCKET, {**analysed, "stage": metric_names.LATENCY_STAGE}),
        scores=by_le(metric_names.SCORE_BUCKET, analysed),
    )


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
        after = scrape_snapshot(self._scrape(role), self.model_name, version, role)
        before = scrape_snapshot(self._baseline.get(role, {}), self.model_name, version, role)
        return between(Snapshot() if was_reset(before, after) else before, after)
