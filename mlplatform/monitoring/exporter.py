"""Drift, training-serving skew and delayed-label quality of served model versions, as Prometheus gauges.

Every `interval_seconds` the monitor reads the prediction log (`mlplatform.monitoring.prediction_log`) and the label
feed (`mlplatform.data.labels`), groups the predictions of the last `window_seconds` by model version, and
compares each version's live window with the reference statistics saved in that version's artifact
(`reference_stats.json`, written by the train step):

- PSI per feature and of the score, over the reference's quantile bins (`stats.psi`);
- KS per continuous feature and of the score, at the reference's bin edges (`stats.ks_statistic`);
  a feature is continuous when its reference has at least `CONTINUOUS_MIN_BINS` distinct quantile bins;
- the missing rate: share of live values that are absent, null, NaN or infinite;
- the training-serving skew: the standardized mean difference (live mean - training mean) / pooled
  standard deviation (`stats.standardized_mean_difference`), signed.

Quality uses the predictions of the last `quality_window_seconds` whose label is known (joined by
record id): precision and recall at the version's operating threshold and PR-AUC. The model age is
the time since the version was registered (MLflow creation time).

Run it with `python -m mlplatform.monitoring.exporter` (or `mlplatform monitor serve`): `/metrics` and `/healthz`
on `MLPLATFORM_MONITOR_PORT`.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mlplatform.http_servers import MetricsServer
from mlplatform.monitoring.drift import MonitorResult
from mlplatform.monitoring.inputs import MonitorInputs, open_inputs
from mlplatform.monitoring.references import ReferenceResolver
from mlplatform.monitoring.settings import MonitorSettings
from mlplatform.monitoring.windows import evaluate_windows
from mlplatform.processes import init_process
from mlplatform.settings import PlatformSettings

log = logging.getLogger(__name__)
#: Outcomes of `mlplatform_monitor_runs_total`.
OUTCOMES = ("ok", "error", "skipped")


# ------------------------------------------------------------------------------------------ metrics

_VERSION_LABELS = ("model_name", "model_version")
_FEATURE_LABELS = ("model_name", "model_version", "feature")
#: name -> (help, labels) of the gauges the collector exports from the latest result.
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "mlplatform_drift_psi": ("PSI of a feature's live window against the training reference.", _FEATURE_LABELS),
    "mlplatform_drift_ks": ("KS distance of a continuous feature's live values vs the reference.", _FEATURE_LABELS),
    "mlplatform_score_psi": ("PSI of the live score distribution against the training scores.", _VERSION_LABELS),
    "mlplatform_score_ks": ("KS distance of the live scores against the training scores.", _VERSION_LABELS),
    "mlplatform_feature_missing_rate": (
        "Share of a feature's live values that are missing, null, NaN or infinite.",
        _FEATURE_LABELS,
    ),
    "mlplatform_feature_skew": (
        "Training-serving skew: (live mean - training mean) / pooled std (signed).",
        _FEATURE_LABELS,
    ),
    "mlplatform_quality_precision": ("Precision at the operating threshold on labelled predictions.", _VERSION_LABELS),
    "mlplatform_quality_recall": ("Recall at the operating threshold on labelled predictions.", _VERSION_LABELS),
    "mlplatform_quality_pr_auc": ("PR-AUC (average precision) on labelled predictions.", _VERSION_LABELS),
    "mlplatform_quality_labelled_predictions": (
        "Predictions in the quality window whose label is known.",
        _VERSION_LABELS,
    ),
    "mlplatform_monitor_window_predictions": ("Predictions of the version in the drift window.", _VERSION_LABELS),
    "mlplatform_model_age_seconds": ("Time since the model version was registered.", _VERSION_LABELS),
}


Samples = dict[str, list[tuple[tuple[str, ...], float]]]


def _add(out: Samples, name: str, labels: tuple[str, ...], value: float | None) -> None:
    if value is not None and not math.isnan(value):
        out[name].append((labels, float(value)))


def metric_samples(result: MonitorResult) -> Samples:
    """The gauge samples of one result: name -> [(label values, value)]; NaN and unknown values are left out."""
    out: Samples = {name: [] for name in GAUGES}
    for v in result.versions:
        ids = (v.model_name, v.model_version)
        _add(out, "mlplatform_monitor_window_predictions", ids, v.predictions)
        _add(out, "mlplatform_model_age_seconds", ids, v.model_age_seconds)
        if v.quality is not None:
            _add(out, "mlplatform_quality_labelled_predictions", ids, v.quality.labelled)
            _add(out, "mlplatform_quality_precision", ids, v.quality.precision)
            _add(out, "mlplatform_quality_recall", ids, v.quality.recall)
            _add(out, "mlplatform_quality_pr_auc", ids, v.quality.pr_auc)
        if not v.has_drift_values:
            continue  # too few predictions (or no reference): drift gauges absent, not 0
        _add(out, "mlplatform_score_psi", ids, v.score_psi)
        _add(out, "mlplatform_score_ks", ids, v.score_ks)
        for f in v.features:
            fid = (*ids, f.feature)
            _add(out, "mlplatform_drift_psi", fid, f.psi)
            _add(out, "mlplatform_drift_ks", fid, f.ks)
            _add(out, "mlplatform_feature_missing_rate", fid, f.missing_rate)
            _add(out, "mlplatform_feature_skew", fid, f.skew)
    return out


class MonitorCollector(Collector):
    """Serves the gauges of the latest result as one consistent snapshot (a version that left the window
    disappears with it)."""

    def __init__(self) -> None:
        self._samples: Samples = {name: [] for name in GAUGES}
        self._lock = threading.Lock()

    def update(self, result: MonitorResult) -> None:
        """Replace the exported values with those of `result`."""
        samples = metric_samples(result)
        with self._lock:
            self._samples = samples

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            samples = self._samples
        for name, (doc, labels) in GAUGES.items():
            family = GaugeMetricFamily(name, doc, labels=list(labels))
            for values, value in samples[name]:
                family.add_metric(list(values), value)
            yield family


class Monitor:
    """The monitor process: evaluates every interval, serves /metrics and /healthz.

    Args:
        settings: What to watch and how often.
        platform: Tracking URI and work dir.
        registry: Where the metrics live (a fresh registry by default).
        clock: Source of the current time (seconds since the epoch).
    """

    def __init__(
        self,
        settings: MonitorSettings,
        platform: PlatformSettings,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.platform = platform
        self.registry = registry or CollectorRegistry()
        self.clock = clock
        self.resolver = ReferenceResolver(platform, settings.model_dir)
        self.collector = MonitorCollector()
        self.registry.register(self.collector)
        self.runs = Counter(
            "mlplatform_monitor_runs",
            "Evaluations per model version by outcome: ok, skipped (too few predictions, or no traffic at all), error.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.runs.labels(outcome=outcome)
        self.last_success = Gauge(
            "mlplatform_monitor_last_success_timestamp_seconds",
            "When an evaluation last completed without error.",
            registry=self.registry,
        )
        self.stop_event = threading.Event()
        self._last_cycle_end = clock()
        self._server: MetricsServer | None = None
        self._inputs: MonitorInputs | None = None  # opened at the first run, kept (a Kafka consumer stays a member)

    def run_once(self) -> MonitorResult | None:
        """One evaluation: update the gauges and count the outcome of each version (None when it failed)."""
        started = self.clock()
        try:
            if self._inputs is None:
                self._inputs = open_inputs(self.settings, self.platform)
            # A log folder that does not exist yet means no traffic yet (skipped), not a failure.
            [result] = evaluate_windows(
                self.settings, self.platform, started, 1, self.resolver, missing_log_ok=True, inputs=self._inputs
            )
        except Exception:
            log.exception("monitor evaluation failed")
            self.runs.labels(outcome="error").inc()
            return None
        finally:
            self._last_cycle_end = self.clock()
        self.collector.update(result)
        if not result.versions:
            self.runs.labels(outcome="skipped").inc()
        for v in result.versions:
            self.runs.labels(outcome=v.outcome).inc()
            if v.error:
                log.warning("model %s version %s: %s", v.model_name, v.model_version, v.error)
        if all(v.outcome != "error" for v in result.versions):
            self.last_success.set(self.clock())
        log.info(
            "evaluated %s: %s",
            result.window.label(),
            ", ".join(f"v{v.model_version} {v.outcome} ({v.predictions} predictions)" for v in result.versions)
            or "no predictions",
        )
        return result

    def healthy(self) -> bool:
        """Whether the evaluation loop is alive (a cycle ended within three intervals plus a minute)."""
        return self.clock() - self._last_cycle_end <= 3 * self.settings.interval_seconds + 60

    def run_forever(self) -> None:
        """Evaluate every interval until `stop_event` is set."""
        while not self.stop_event.is_set():
            self.run_once()
            self.stop_event.wait(self.settings.interval_seconds)

    def start_http(self) -> int:
        """Serve /metrics and /healthz in a background thread; returns the bound port."""
        self._server = MetricsServer(
            self.registry,
            self.settings.port,
            self.settings,
            healthy=self.healthy,
            unhealthy_message="evaluation loop stalled",
            name="monitor-http",
        )
        return self._server.start()

    def stop(self) -> None:
        """Stop the loop and the HTTP server."""
        self.stop_event.set()
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._inputs is not None:
            self._inputs.close()
            self._inputs = None

    def serve(self) -> None:
        """Serve until SIGTERM or SIGINT: the HTTP endpoint in the background, the loop in this thread."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        port = self.start_http()
        log.info(
            "monitor of %s on http://%s:%d/metrics (%s, window %ss, every %ss)",
            self.settings.monitored_model(self.platform),
            self.settings.host,
            port,
            f"Kafka at {self.settings.kafka_bootstrap_servers}"
            if self.settings.kafka_bootstrap_servers
            else f"log {self.settings.log_dir(self.platform)}, labels {self.settings.label_dir(self.platform)}",
            self.settings.window_seconds,
            self.settings.interval_seconds,
        )
        try:
            self.run_forever()
        finally:
            self.stop()
            log.info("monitor stopped")


def usage() -> str:
    """What `python -m mlplatform.monitoring.exporter --help` prints: the settings and their variables."""
    lines = ["usage: python -m mlplatform.monitoring.exporter   (no arguments; settings from the environment)", ""]
    for name, f in MonitorSettings.model_fields.items():
        lines.append(f"  MLPLATFORM_MONITOR_{name.upper()}  (default {f.default!r}): {f.description}")
    lines.append("  MLPLATFORM_MLFLOW_TRACKING_URI, MLPLATFORM_WORK_DIR, ...: see mlplatform.settings.PlatformSettings")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: `python -m mlplatform.monitoring.exporter` (settings from MLPLATFORM_MONITOR_* and MLPLATFORM_*)."""
    init_process()
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        print(usage(), file=sys.stdout if args[0] in ("-h", "--help") else sys.stderr)
        raise SystemExit(0 if args[0] in ("-h", "--help") else 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Monitor(MonitorSettings(), PlatformSettings()).serve()


if __name__ == "__main__":
    main()
