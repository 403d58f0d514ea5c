"""Domain metrics of the serving processes, beside KServe's own stage histograms (request_*_seconds).

Every series carries the same bounded labels: model_name, model_version, role (stable/canary) and
component (transformer/predictor). Never a request id or a customer id.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from mlplatform import metric_names as names

LABELS = names.SERVING_LABELS
#: Latency buckets (seconds) fine enough to read a 10 ms p99 off them.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
#: Score buckets: twenty equal-width bins on [0, 1], so canary analysis can compare score distributions.
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))

OUTCOMES = names.OUTCOMES


class ServingMetrics:
    """The metric families of one serving process, with its constant labels bound.

    Args:
        model_name: Served model name.
        model_version: Registry version.
        role: stable or canary.
        component: transformer or predictor.
        registry: Where the families are registered (the default registry is what /metrics serves).
    """

    def __init__(
        self,
        model_name: str,
        model_version: str,
        role: str,
        component: str,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.labels = {"model_name": model_name, "model_version": model_version, "role": role, "component": component}
        self.requests = Counter(
            names.REQUESTS,
            "Inference requests answered, by outcome (ok, invalid, unauthorized, unavailable, error).",
            (*LABELS, "outcome"),
            registry=registry,
        )
        self.instances = Counter(
            names.INSTANCES,
            "Transactions scored (a request may carry several).",
            LABELS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            names.STAGE_SECONDS,
            "Latency of each serving stage (validate, features, predict, postprocess, total).",
            (*LABELS, "stage"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.feature_lookup_seconds = Histogram(
            names.FEATURE_LOOKUP_SECONDS,
            "Latency of one online feature lookup (a whole batch) against the Feast online store.",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.feature_misses = Counter(
            names.FEATURE_MISSES,
            "Entities the online store had no features for (defaults were used), by entity.",
            (*LABELS, "entity"),
            registry=registry,
        )
        self.feature_store_errors = Counter(
            names.FEATURE_STORE_ERRORS,
            "Failed online feature lookups, by reason (timeout, error).",
            (*LABELS, "reason"),
            registry=registry,
        )
        self.score = Histogram(
            names.SCORE,
            "Fraud scores returned.",
            LABELS,
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.fallbacks = Counter(
            names.FALLBACKS,
            "Scores replaced by the fallback heuristic, by reason (non_finite, out_of_range, features_unavailable).",
            (*LABELS, "reason"),
            registry=registry,
        )
        self.model_info = Gauge(
            names.MODEL_INFO,
            "The served model (value 1); its identity is in the labels.",
            (*LABELS, "mlflow_run_id"),
            registry=registry,
        )
        self.log_records = Counter(
            names.PREDICTION_LOG_RECORDS,
            "Prediction log records written to durable storage.",
            LABELS,
            registry=registry,
        )
        self.log_errors = Counter(
            names.PREDICTION_LOG_ERRORS,
            "Prediction log write failures (records are kept in memory and retried).",
            LABELS,
            registry=registry,
        )
        self.event_backlog = Gauge(
            names.EVENT_BACKLOG,
            "Events (answered transactions and predictions) not acknowledged by Kafka yet: queued or spooled to "
            "local disk while the broker is away (mlplatform.events).",
            LABELS,
            registry=registry,
        )
        self.event_delivery_errors = Counter(
            names.EVENT_DELIVERY_ERRORS,
            "Events the broker refused (kept in the spool and sent again).",
            LABELS,
            registry=registry,
        )
        # Children bound once: a labels() lookup per observation costs more than the observation.
        # Every outcome exists from the start, so rates are never "no data".
        self._requests = {o: self.requests.labels(**self.labels, outcome=o) for o in OUTCOMES}
        self._stages: dict[str, Any] = {}
        self._score = self.score.labels(**self.labels)
        self._instances = self.instances.labels(**self.labels)

    def info(self, mlflow_run_id: str) -> None:
        """Publish the model info series."""
        self.model_info.labels(**self.labels, mlflow_run_id=mlflow_run_id).set(1)

    def request(self, outcome: str) -> None:
        """Count one answered request."""
        self._requests[outcome].inc()

    def stage(self, stage: str, seconds: float) -> None:
        """Observe one stage's latency."""
        child = self._stages.get(stage)
        if child is None:
            child = self._stages[stage] = self.stage_seconds.labels(**self.labels, stage=stage)
        child.observe(seconds)

    def scores(self, values: list[float]) -> None:
        """Observe returned scores."""
        for v in values:
            self._score.observe(v)
        self._instances.inc(len(values))

    def fallback(self, reason: str, n: int = 1) -> None:
        """Count scores replaced by the fallback."""
        self.fallbacks.labels(**self.labels, reason=reason).inc(n)

    def miss(self, entity: str, n: int = 1) -> None:
        """Count entities without online features."""
        self.feature_misses.labels(**self.labels, entity=entity).inc(n)

    def store_error(self, reason: str) -> None:
        """Count a failed online lookup."""
        self.feature_store_errors.labels(**self.labels, reason=reason).inc()
