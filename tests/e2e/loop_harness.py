"""Harness of the feedback-loop end-to-end test and benchmark: drift -> alert -> retraining -> canary rollout.

Everything is a real local process: the champion served by a transformer + predictor pair (Feast online
store, prediction log), the drift monitor (`python -m mlplatform.monitoring.exporter`), the alert webhook
(`python -m mlplatform.feedback.webhook`, backend local: it starts `mlplatform run` in a child process), a
Prometheus server scraping the monitor, the webhook and the serving pair while evaluating the project's
rules (`for` capped by `mlplatform.local.prometheus.shortened_rules`), and an Alertmanager routing to the webhook.

Data: one generated stream of `history_days + 1` days. The first `history_days` are the data lake
snapshot (`history.parquet`): the champion is trained on it and the online store holds its latest
features. The last day is the live traffic, replayed with its own timestamps (the day after the
snapshot ends): undrifted as the control, and the same day generated with `drift=1.0` (the same
customers and merchants; larger amounts, more night activity) as the drift.

The champion is trained on the snapshot's rows once the 30-day aggregates are warm (the pipeline's
`warmup_days`, `MERCHANT_WINDOW_DAYS`): rows from the first 30 days carry partial 30-day counts that served
traffic never has, and a reference built on them shows drift on undrifted traffic (see the report in
docs/adr/0011-monitoring.md). The retraining run is the real pipeline, with the same warm-up, on the
drifted stream's snapshot: the data that moved.

Used by tests/e2e/test_feedback_loop.py and benchmarks/bench_feedback_loop.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from mlplatform.data.generator import GeneratorConfig, generate_transactions, write_transactions
from mlplatform.features.compute import CUSTOMER_FRESHNESS_S, MERCHANT_WINDOW_DAYS
from mlplatform.settings import PlatformSettings

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "rules" / "mlplatform.rules.yaml"
MODEL = "fraud-detector"
#: Alerts of the rules file that start a retraining run (the webhook's default trigger names).
DRIFT_ALERTS = ("MlplatformFeatureDrift", "MlplatformScoreDrift")
#: PSI at which MlplatformFeatureDrift fires (monitoring/rules/mlplatform.rules.yaml, monitor.PSI_ALERT).
PSI_ALERT = 0.25
TOKEN = "feedback-loop-token"


class LoopError(AssertionError):
    """A link of the feedback loop did not happen in time; the message names it and carries the logs."""


@dataclass(frozen=True)
class LoopConfig:
    """Sizes, seeds and timings of one feedback-loop run.

    Attributes:
        n_transactions: Transactions of the generated stream (snapshot + live day).
        history_days: Days of the snapshot; the live day follows.
        seed: Seed of the generator and of training.
        validation_days: Validation days (champion and retraining run).
        test_days: Test days (champion and retraining run).
        champion_epochs: Training epochs of the champion.
        retrain_epochs: `max_epochs` of the retraining run.
        rps: Client requests per second of the live traffic.
        monitor_window_seconds: The monitor's drift window.
        monitor_min_predictions: Predictions a window needs before drift is computed.
        control_seconds: How long undrifted traffic runs once the monitor's window is full.
        link_timeout_seconds: Longest wait for each fast link (gauge, alert, webhook).
        run_timeout_seconds: Longest wait for the retraining run (pipeline and rollout).
        canary: MLPLATFORM_CANARY_* of the rollout the retraining run performs (short windows).
    """

    n_transactions: int = 40_000
    history_days: int = 45
    seed: int = 11
    validation_days: int = 5
    test_days: int = 5
    champion_epochs: int = 3
    retrain_epochs: int = 3
    rps: float = 80.0
    monitor_window_seconds: float = 8.0
    monitor_min_predictions: int = 200
    control_seconds: float = 10.0
    link_timeout_seconds: float = 90.0
    run_timeout_seconds: float = 600.0
    canary: dict[str, str] = field(
        default_factory=lambda: {
            "STEP_WINDOW_SECONDS": "4",
            "ANALYSIS_INTERVAL_SECONDS": "1",
            "MIN_REQUESTS": "15",
            "P99_LATENCY_TOLERANCE_SECONDS": "0.01",
            "STEP_MAX_WAIT_SECONDS": "90",
        }
    )

    def generator(self, drift: float) -> GeneratorConfig:
        """The stream's generator: snapshot and live day, with or without drift (same customers, merchants)."""
        return GeneratorConfig(
            n_transactions=self.n_transactions, n_days=self.history_days + 1, seed=self.seed, drift=drift
        )

    @property
    def live_start(self) -> pd.Timestamp:
        """Start of the live day (the snapshot ends here)."""
        return pd.Timestamp(self.generator(0.0).start) + pd.Timedelta(days=self.history_days)

    def pipeline_params(self, history: Path) -> dict[str, Any]:
        """Parameters of the retraining run the webhook starts (MLPLATFORM_WEBHOOK_PIPELINE_PARAMS).

        `history` is the drifted snapshot: the validate-data step reports its drift against the champion's
        reference as expected (the run's trigger is the drift alert) instead of failing the run.
        """
        return {
            "source_path": str(history),
            "seed": self.seed,
            "validation_days": self.validation_days,
            "test_days": self.test_days,
            "warmup_days": MERCHANT_WINDOW_DAYS,
            "max_epochs": self.retrain_epochs,
        }


# --- data ---------------------------------------------------------------------------------------------------------


def write_history(config: LoopConfig, path: Path) -> Path:
    """The snapshot: the undrifted stream before the live day."""
    tx = generate_transactions(config.generator(0.0))
    return write_transactions(tx[tx["event_timestamp"] < config.live_start].reset_index(drop=True), path)


def live_requests(config: LoopConfig, drift: float) -> list[dict[str, Any]]:
    """The live day as predict instances, generated with `drift`, timestamped for a batch-refreshed store.

    The online store holds each customer's features as of their last purchase in the snapshot; it is not
    updated while the live day is served. A live purchase is therefore sent at that last purchase plus
    the time the customer really waited since their previous purchase: `log_seconds_since_last` is then
    what the offline (point-in-time) features give, as a stream-refreshed store would serve it. With the
    live day's own timestamps every purchase after a customer's first of the day looks a day old
    (PSI 2.4 against the training reference on undrifted traffic; reported in docs/adr/0011-monitoring.md).
    """
    tx = generate_transactions(config.generator(drift)).sort_values(["customer_id", "event_timestamp"])
    previous = tx.groupby("customer_id")["event_timestamp"].shift(1)
    snapshot = generate_transactions(config.generator(0.0))  # what the online store was built from
    snapshot = snapshot[snapshot["event_timestamp"] < config.live_start]
    last_in_store = snapshot.groupby("customer_id")["event_timestamp"].max() + pd.Timedelta(
        seconds=CUSTOMER_FRESHNESS_S
    )
    live = tx["event_timestamp"] >= config.live_start
    if not live.any():
        raise ValueError(f"the live day of {config} holds no transactions; raise n_transactions")
    stored = tx["customer_id"].map(last_in_store)
    sent_at = (stored + (tx["event_timestamp"] - previous)).where(stored.notna() & previous.notna())
    sent_at = sent_at.fillna(tx["event_timestamp"])
    rows = tx[live].assign(sent_at=sent_at[live]).sort_values("event_timestamp")
    return [
        {
            "transaction_id": f"live-d{drift:g}-{r.transaction_id}",
            "customer_id": int(r.customer_id),
            "merchant_id": int(r.merchant_id),
            "amount": float(r.amount),
            "timestamp": r.sent_at.isoformat(),
        }
        for r in rows.itertuples()
    ]


@dataclass(frozen=True)
class Bootstrap:
    """The state before the loop: a snapshot, a feature store built from it, a registered champion."""

    settings: PlatformSettings
    history: Path
    champion_version: str
    seconds: float


def bootstrap(work: Path, config: LoopConfig) -> Bootstrap:
    """Snapshot -> ingest -> features (online store) -> training set -> champion (version 1), in this process.

    The champion's training rows start once the 30-day aggregates are warm (the module docstring says why).
    """
    import mlflow

    from components.features.step import run_features
    from components.ingest.step import run_ingest
    from components.train.step import run_train
    from components.training_set.step import run_training_set
    from mlplatform import registry
    from mlplatform.training.loop import TrainConfig

    started = time.monotonic()
    settings = PlatformSettings(work_dir=work)
    history = write_history(config, work / "lake" / "history.parquet")
    boot = work / "bootstrap"
    raw = boot / "raw.parquet"
    run_ingest(raw, source_path=str(history))
    run_features(raw, settings)
    splits = {name: boot / f"{name}.parquet" for name in ("train", "validation", "test")}
    run_training_set(
        raw,
        settings,
        config.validation_days,
        config.test_days,
        splits["train"],
        splits["validation"],
        splits["test"],
        warmup_days=MERCHANT_WINDOW_DAYS,
    )
    train = pd.read_parquet(splits["train"])
    if train["is_fraud"].sum() < 10:
        raise ValueError(f"too little warm training data ({len(train)} rows); raise n_transactions or history_days")
    outcome = run_train(
        splits["train"],
        splits["validation"],
        boot / "model",
        TrainConfig(max_epochs=config.champion_epochs, seed=config.seed),
        settings,
    )
    registry.configure(settings)
    source = f"{mlflow.get_run(outcome.mlflow_run_id).info.artifact_uri}/model"
    version = registry.register_version(MODEL, source, outcome.mlflow_run_id, {"trigger": "bootstrap"}, [])
    return Bootstrap(settings, history, version.version, time.monotonic() - started)


def build_drifted_store(work: Path, config: LoopConfig) -> tuple[PlatformSettings, Path]:
    """A second feature store built from the drifted stream's snapshot (drift that has lasted a while: the
    feature pipeline has materialized drifted purchases too); returns its settings and the snapshot."""
    from components.features.step import run_features
    from components.ingest.step import run_ingest

    tx = generate_transactions(config.generator(1.0))
    history = write_transactions(
        tx[tx["event_timestamp"] < config.live_start].reset_index(drop=True), work / "lake" / "history-drifted.parquet"
    )
    settings = PlatformSettings(work_dir=work, feast_data_dir=work / "feast-drifted")
    raw = work / "bootstrap-drifted" / "raw.parquet"
    run_ingest(raw, source_path=str(history))
    run_features(raw, settings)
    return settings, history


# --- processes ----------------------------------------------------------------------------------------------------


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without MLPLATFORM_* (a developer's settings must not leak in), plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MLPLATFORM_")}, **extra}


@contextmanager
def child_process(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, logging to `log_path`, stopped with SIGTERM (SIGKILL after 20 s) on exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return f"--- {path} (tail) ---\n" + path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"--- {path}: no log ---"


def wait_until(
    predicate: Callable[[], Any], timeout_seconds: float, what: str, logs: tuple[Path, ...] = (), poll: float = 0.2
) -> Any:
    """Poll `predicate` until it returns something truthy; LoopError naming `what` (with log tails) otherwise."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise LoopError(f"timed out after {timeout_seconds:g} s waiting for {what}\n" + "\n".join(map(_tail, logs)))
        time.sleep(poll)  # polling interval of a readiness check


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted label pairs -> value} of a /metrics page ({} when it does not answer)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return {}
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def healthy(url: str) -> bool:
    """Whether `url` answers 200."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- the loop -----------------------------------------------------------------------------------------------------


@dataclass
class LoopResult:
    """What happened, with wall-clock times (Unix seconds) of each link.

    Attributes:
        timings_seconds: From drift onset to: drift_gauge (Prometheus holds a PSI >= 0.25), alert_firing,
            run_started (the webhook started the retraining run), challenger_registered (MLflow version
            created), rollout_started, rollout_finished; and new_champion or rolled_back (= rollout_finished).
    """

    config: dict[str, Any]
    bootstrap_seconds: float = 0.0
    control_predictions: float = 0.0
    control_max_psi: dict[str, float] = field(default_factory=dict)
    control_max_score_psi: float = float("nan")
    control_alerts: list[str] = field(default_factory=list)
    control_runs_started: float = 0.0
    drift_max_psi: dict[str, float] = field(default_factory=dict)
    onset_unix_s: float = 0.0
    times_unix_s: dict[str, float] = field(default_factory=dict)
    alert: dict[str, Any] = field(default_factory=dict)
    alertmanager_fingerprints: dict[str, list[str]] = field(default_factory=dict)
    webhook_runs: dict[str, float] = field(default_factory=dict)
    run_name: str = ""
    run_log: str = ""
    versions_before: list[str] = field(default_factory=list)
    challenger: dict[str, Any] = field(default_factory=dict)
    run_tags: dict[str, str] = field(default_factory=dict)
    rollout: dict[str, Any] = field(default_factory=dict)
    aliases_after: dict[str, str | None] = field(default_factory=dict)
    traffic_statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    total_seconds: float = 0.0

    @property
    def timings_seconds(self) -> dict[str, float]:
        return {k: round(v - self.onset_unix_s, 2) for k, v in self.times_unix_s.items()}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "timings_seconds": self.timings_seconds}


def _iso_unix(iso: str) -> float:
    t = datetime.fromisoformat(iso)
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _statuses(responses: list[Any]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in responses:
        out[r.status] = out.get(r.status, 0) + 1
    return out


def run_feedback_loop(work: Path, config: LoopConfig | None = None, log: Callable[[str], None] = print) -> LoopResult:
    """Bootstrap, then drive the loop from undrifted traffic to the rollout's outcome; every wait is bounded.

    Raises:
        LoopError: A link did not happen in time (the message names it and carries the relevant logs).
    """
    from mlplatform import registry
    from mlplatform.deploy.artifact import prepare_local
    from mlplatform.deploy.cluster import serving_env
    from mlplatform.local.prometheus import LocalAlertmanager, LocalPrometheus, shortened_rules
    from mlplatform.local.serving import free_port, start_local
    from mlplatform.local.traffic import TrafficGenerator

    config = config or LoopConfig()
    started = time.monotonic()
    result = LoopResult(config=asdict(config))
    boot = bootstrap(work, config)
    drifted_settings, drifted_history = build_drifted_store(work, config)
    result.bootstrap_seconds = round(time.monotonic() - started, 1)
    log(
        f"bootstrap: snapshot, two feature stores and champion v{boot.champion_version} in {result.bootstrap_seconds} s"
    )
    settings = boot.settings
    control_requests, drift_requests = live_requests(config, 0.0), live_requests(config, 1.0)
    logs = work / "logs" / "loop"
    champion = registry.get_version(MODEL, boot.champion_version)
    model_dir = prepare_local(settings, champion)
    gates = {
        "MLPLATFORM_GATE_MIN_ROC_AUC": "0",
        "MLPLATFORM_GATE_MIN_PR_AUC": "0",
        "MLPLATFORM_GATE_MIN_BASELINE_RATIO": "0",
        "MLPLATFORM_GATE_MAX_REGRESSION": "1",
    }
    canary = {f"MLPLATFORM_CANARY_{k}": v for k, v in config.canary.items()}
    monitor_port, webhook_port = free_port(), free_port()
    monitor_url, webhook_url = f"http://127.0.0.1:{monitor_port}", f"http://127.0.0.1:{webhook_port}"
    monitor_log, webhook_log = logs / "monitor.log", logs / "webhook.log"
    base_env = {"MLPLATFORM_WORK_DIR": str(work)}
    rules = shortened_rules(RULES, work / "rules" / "mlplatform.rules.yaml", max_for_seconds=1)

    with ExitStack() as stack:
        pairs = {}
        for name, s in (("control", settings), ("drift", drifted_settings)):
            pairs[name] = stack.enter_context(
                start_local(
                    model_dir,
                    model_name=MODEL,
                    env=serving_env(s, champion.version, "stable"),
                    log_dir=logs / f"serving-{name}",
                )
            )
        stack.enter_context(
            child_process(
                [sys.executable, "-m", "mlplatform.monitoring.exporter"],
                child_env(
                    {
                        **base_env,
                        "MLPLATFORM_MONITOR_HOST": "127.0.0.1",
                        "MLPLATFORM_MONITOR_PORT": str(monitor_port),
                        "MLPLATFORM_MONITOR_INTERVAL_SECONDS": "1",
                        "MLPLATFORM_MONITOR_WINDOW_SECONDS": str(config.monitor_window_seconds),
                        "MLPLATFORM_MONITOR_MIN_WINDOW_PREDICTIONS": str(config.monitor_min_predictions),
                    }
                ),
                monitor_log,
            )
        )
        webhook = stack.enter_context(
            child_process(
                [sys.executable, "-m", "mlplatform.feedback.webhook"],
                child_env(
                    {
                        **base_env,
                        **gates,
                        **canary,
                        "MLPLATFORM_WEBHOOK_HOST": "127.0.0.1",
                        "MLPLATFORM_WEBHOOK_PORT": str(webhook_port),
                        "MLPLATFORM_WEBHOOK_AUTH_TOKEN": TOKEN,
                        "MLPLATFORM_WEBHOOK_COOLDOWN_SECONDS": "3600",
                        "MLPLATFORM_WEBHOOK_RUN_POLL_INTERVAL_SECONDS": "1",
                        "MLPLATFORM_WEBHOOK_PIPELINE_PARAMS": json.dumps(config.pipeline_params(drifted_history)),
                    }
                ),
                webhook_log,
            )
        )
        am = stack.enter_context(
            LocalAlertmanager(work / "alertmanager", [f"{webhook_url}/alerts"], bearer_token=TOKEN)
        )
        prom = stack.enter_context(LocalPrometheus(work / "prometheus", rule_files=[rules], alertmanager_url=am.url))
        wait_until(lambda: healthy(f"{monitor_url}/healthz"), 60, "the monitor's /healthz", (monitor_log,))
        wait_until(lambda: healthy(f"{webhook_url}/healthz"), 60, "the webhook's /healthz", (webhook_log,))
        prom.set_targets("mlplatform-monitor", [monitor_url.removeprefix("http://")])
        prom.set_targets("mlplatform-webhook", [webhook_url.removeprefix("http://")])
        prom.set_targets("mlplatform-serving", [p.url.removeprefix("http://") for p in pairs.values()])
        for job in ("mlplatform-monitor", "mlplatform-webhook", "mlplatform-serving"):
            prom.wait_scraped(job, timeout_seconds=60)
        v1 = f'model_version="{champion.version}"'

        def drift_alerts(states: tuple[str, ...]) -> list[dict[str, Any]]:
            return [a for a in prom.alerts() if a["labels"]["alertname"] in DRIFT_ALERTS and a["state"] in states]

        # 1. control: undrifted traffic until the monitor's window is full, then `control_seconds` more
        traffic = TrafficGenerator(pairs["control"].predict_url, control_requests, rps=config.rps).start()
        try:
            wait_until(
                lambda: (
                    any(
                        s.value >= config.monitor_min_predictions
                        for s in prom.query(f"mlplatform_monitor_window_predictions{{{v1}}}")
                    )
                    and prom.query(f"mlplatform_drift_psi{{{v1}}}")
                ),
                config.link_timeout_seconds,
                "the monitor's drift gauges on undrifted traffic (a full window in Prometheus)",
                (monitor_log,),
            )
            full_at = time.time()
            wait_until(lambda: time.time() >= full_at + config.monitor_window_seconds, config.link_timeout_seconds, "")
            control_from = time.time()  # from here every window holds control traffic only
            seen: set[str] = set()
            while time.time() < control_from + config.control_seconds:
                seen |= {f"{a['labels']['alertname']}:{a['state']}" for a in drift_alerts(("pending", "firing"))}
                time.sleep(0.5)  # observation interval of the control period
            span = f"{max(1, round(time.time() - control_from))}s"
            result.control_max_psi = {
                s.labels["feature"]: round(s.value, 4)
                for s in prom.query(f"max by (feature) (max_over_time(mlplatform_drift_psi{{{v1}}}[{span}]))")
            }
            score = prom.query(f"max(max_over_time(mlplatform_score_psi{{{v1}}}[{span}]))")
            result.control_max_score_psi = round(score[0].value, 4) if score else float("nan")
            result.control_predictions = max(
                (s.value for s in prom.query(f"mlplatform_monitor_window_predictions{{{v1}}}")), default=0.0
            )
            result.control_alerts = sorted(seen)
            runs = scrape(f"{webhook_url}/metrics").get("mlplatform_retraining_runs_total", {})
            result.control_runs_started = sum(v for k, v in runs.items() if dict(k)["outcome"] == "started")
            log(
                f"control: {result.control_predictions:.0f} predictions per window, max PSI "
                f"{max(result.control_max_psi.values()):.3f}, alerts {result.control_alerts or 'none'}"
            )
        finally:
            result.traffic_statuses["control"] = _statuses(traffic.stop())

        # 2. drift: the same day generated with drift, served from the drifted store
        result.onset_unix_s = time.time()
        traffic = TrafficGenerator(pairs["drift"].predict_url, drift_requests, rps=config.rps).start()
        try:
            wait_until(
                lambda: prom.query(f"max(mlplatform_drift_psi{{{v1}}}) >= {PSI_ALERT}"),
                config.link_timeout_seconds,
                f"a drift gauge >= {PSI_ALERT} in Prometheus",
                (monitor_log,),
            )
            result.times_unix_s["drift_gauge"] = time.time()
            [firing, *_] = wait_until(
                lambda: drift_alerts(("firing",)), config.link_timeout_seconds, "a drift alert firing in Prometheus"
            )
            result.times_unix_s["alert_firing"] = time.time()
            result.alert = {"labels": firing["labels"], "value": firing.get("value")}
            started_at = wait_until(
                lambda: (
                    scrape(f"{webhook_url}/metrics")
                    .get("mlplatform_retraining_last_trigger_timestamp_seconds", {})
                    .get((), 0.0)
                ),
                config.link_timeout_seconds,
                "the webhook to start a retraining run (Alertmanager -> webhook)",
                (webhook_log, am.log_path),
            )
            result.times_unix_s["run_started"] = float(started_at)
            result.alertmanager_fingerprints = {  # read while the alerts still fire (drift traffic still flows)
                name: sorted(a["fingerprint"] for a in am.alerts() if a["labels"]["alertname"] == name)
                for name in DRIFT_ALERTS
            }
            result.drift_max_psi = {
                s.labels["feature"]: round(s.value, 4)
                for s in prom.query(f"max by (feature) (mlplatform_drift_psi{{{v1}}})")
            }
        finally:
            result.traffic_statuses["drift"] = _statuses(traffic.stop())
        for name in list(pairs):  # the run rebuilds the online store: nothing reads it meanwhile
            pairs.pop(name).stop()
        health = httpx.get(f"{webhook_url}/healthz", timeout=5).json()
        result.run_name = (health.get("active_runs") or [""])[0]
        result.run_log = str(work / "retraining" / f"{result.run_name}.log")
        log(f"drift: alert {firing['labels']['alertname']} fired, run {result.run_name} started; waiting for it")

        # 3. the retraining run: pipeline, registration, canary rollout
        def finished() -> dict[str, float] | None:
            if webhook.poll() is not None:
                raise LoopError(f"the webhook exited with {webhook.returncode}\n{_tail(webhook_log)}")
            runs = scrape(f"{webhook_url}/metrics").get("mlplatform_retraining_runs_total", {})
            counts = {f"{dict(k)['trigger']}:{dict(k)['outcome']}": v for k, v in runs.items() if v}
            done = any(k.endswith((":succeeded", ":failed")) for k in counts)
            return counts if done else None

        result.webhook_runs = wait_until(
            finished, config.run_timeout_seconds, "the retraining run to finish", (Path(result.run_log),), poll=1.0
        )
        if not any(k.endswith(":succeeded") for k in result.webhook_runs):
            raise LoopError(f"the retraining run failed: {result.webhook_runs}\n{_tail(Path(result.run_log), 6000)}")
        _read_registry(result, settings, boot.champion_version, log)
    result.total_seconds = round(time.monotonic() - started, 1)
    return result


def _read_registry(
    result: LoopResult,
    settings: PlatformSettings,
    champion_version: str,
    log: Callable[[str], None],
) -> None:
    """The new version, its run's tags and the outcome of the rollout the run's deploy-canary step performed."""
    import mlflow

    from mlplatform import registry
    from mlplatform.rollout.backends import report_root

    registry.configure(settings)
    client = mlflow.MlflowClient()
    versions = sorted(client.search_model_versions(f"name='{MODEL}'"), key=lambda v: int(v.version))
    result.versions_before = [champion_version]
    new = [v for v in versions if str(v.version) != champion_version]
    if len(new) != 1:
        raise LoopError(f"expected one new version after the retraining run, found {[v.version for v in new]}")
    mv = new[0]
    result.times_unix_s["challenger_registered"] = mv.creation_timestamp / 1000.0
    result.challenger = {"version": str(mv.version), "tags": dict(mv.tags), "run_id": mv.run_id}
    result.run_tags = dict(mlflow.get_run(mv.run_id).data.tags)
    if "rollout.outcome" not in mv.tags:
        raise LoopError(
            f"version {mv.version} has no rollout.outcome tag: the retraining run's deploy-canary step did not roll "
            f"it out\n{_tail(Path(result.run_log), 6000)}"
        )
    reports = [json.loads(p.read_text()) for p in report_root(settings).glob("*/report.json")]
    mine = [r for r in reports if r.get("canary_version") == str(mv.version)]
    if not mine:
        raise LoopError(f"no rollout report for version {mv.version} under {report_root(settings)}")
    result.rollout = mine[-1]
    result.times_unix_s["rollout_started"] = _iso_unix(result.rollout["started_at"])
    result.times_unix_s["rollout_finished"] = _iso_unix(result.rollout["finished_at"])
    key = "new_champion" if result.rollout["outcome"] == "promoted" else "rolled_back"
    result.times_unix_s[key] = result.times_unix_s["rollout_finished"]
    result.aliases_after = {
        a: (v.version if (v := registry.get_alias(MODEL, a)) else None)
        for a in (registry.CHAMPION, registry.CHALLENGER, registry.PREVIOUS)
    }
    log(f"rollout of v{mv.version}: {result.rollout['outcome']} ({result.rollout['reason']})")
