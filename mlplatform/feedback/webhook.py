"""Alertmanager webhook receiver that starts a retraining run on a firing drift or quality alert.

The feedback loop: Prometheus evaluates monitoring/rules/mlplatform.rules.yaml -> Alertmanager routes the
alerts to this receiver (webhook payload version 4) -> for a firing alert whose name is in
`retrain_alertnames` it starts the training pipeline with `trigger=alert:<alertname>@<fingerprint>`, which
the register step records as MLflow tags on the run and the model version.

- backend `local`: `mlplatform run --no-serve` (kfp.local) in a child process, its log under
  `<work_dir>/retraining/`; backend `kfp`: a run on the Kubeflow Pipelines API (`runner.submit`).
- One retraining run per model at a time, and none within `cooldown_seconds` of the last start for that
  model: alerts that arrive meanwhile (other fingerprints, repeats) are counted as deduplicated.
- Launching happens on a worker thread and run states are polled on another: the HTTP handler never waits
  for the pipeline or the KFP API.

Run it with `mlplatform webhook` or `python -m mlplatform.feedback.webhook`; `/metrics` and `/healthz` on the same port.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlplatform.errors import ConfigError, MlPlatformError
from mlplatform.feedback.launchers import KfpLauncher, Launcher, LocalLauncher, RunHandle
from mlplatform.http import Guard, HttpBodySettings, metrics_payload
from mlplatform.http_servers import uvicorn_options
from mlplatform.params import PipelineParams, parse_params
from mlplatform.processes import init_process
from mlplatform.settings import PlatformSettings

log = logging.getLogger(__name__)

#: Alerts of monitoring/rules/mlplatform.rules.yaml labelled action="retrain".
DEFAULT_RETRAIN_ALERTNAMES = ("MlplatformFeatureDrift", "MlplatformScoreDrift", "MlplatformQualityDrop")
#: What happened to one alert of a notification (label `action` of mlplatform_webhook_alerts_total).
ACTIONS = ("started", "deduplicated_active", "deduplicated_cooldown", "ignored")
#: Outcomes of mlplatform_retraining_runs_total.
RUN_OUTCOMES = ("started", "succeeded", "failed")
#: Outcomes of mlplatform_webhook_notifications_total (from unauthorized on: turned away by mlplatform.http.Guard).
NOTIFICATION_OUTCOMES = ("accepted", "invalid", "unauthorized", "too_large", "timeout", "unavailable")
#: alertname label value for alerts that are not retraining triggers (keeps the label bounded).
OTHER_ALERT = "other"


class WebhookError(MlPlatformError):
    """The webhook receiver could not start a retraining run."""


class WebhookSettings(HttpBodySettings, BaseSettings):
    """Settings of the webhook receiver; each field from `MLPLATFORM_WEBHOOK_<FIELD NAME>`.

    Lists and mappings are JSON, e.g. `MLPLATFORM_WEBHOOK_PIPELINE_PARAMS='{"n_transactions": 20000}'`.
    MLflow and the local work dir come from `PlatformSettings` (`MLPLATFORM_*`). The address (loopback unless
    `MLPLATFORM_WEBHOOK_HOST` says otherwise; the serving image sets 0.0.0.0) and the limits on slow or oversize
    requests are `HttpBodySettings`'.
    """

    model_config = SettingsConfigDict(env_prefix="MLPLATFORM_WEBHOOK_", extra="forbid")

    port: int = Field(default=9109, ge=0, le=65535, description="Port of /alerts, /metrics and /healthz.")
    retrain_alertnames: list[str] = Field(
        default=list(DEFAULT_RETRAIN_ALERTNAMES),
        description="Alert names whose firing starts a retraining run (drift and quality alerts).",
    )
    cooldown_seconds: float = Field(
        default=6 * 3600.0,
        ge=0,
        description="After a retraining run starts for a model, further alerts for it start nothing for this long.",
    )
    backend: Literal["local", "kfp"] = Field(
        default="local", description="local: kfp.local in a child process; kfp: a run on the Kubeflow Pipelines API."
    )
    kfp_host: str | None = Field(default=None, description="Kubeflow Pipelines API endpoint (backend kfp).")
    kfp_experiment: str = Field(default="fraud-detection", description="KFP experiment the runs are filed under.")
    kfp_pipeline_package: Path | None = Field(
        default=None, description="Compiled pipeline YAML (backend kfp); compiled from pipelines/ when unset."
    )
    pipeline_params: dict[str, Any] = Field(
        default_factory=dict,
        description="Parameters of every retraining run (mlplatform.params.PipelineParams fields but trigger).",
    )
    auth_token: SecretStr | None = Field(
        default=None,
        description="Bearer token Alertmanager must send (http_config.authorization); unset accepts any sender.",
    )
    run_poll_interval_seconds: float = Field(default=15.0, gt=0, description="Time between run state checks.")

    @field_validator("pipeline_params")
    @classmethod
    def _params_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "trigger" in value:
            raise ValueError("trigger is set per run from the alert; remove it from pipeline_params")
        try:
            parse_params(value)
        except ConfigError as exc:  # pydantic reports ValueErrors as validation errors naming the field
            raise ValueError(str(exc)) from None
        return value

    def check(self) -> None:
        """Cross-field checks.

        Raises:
            ConfigError: backend kfp without a host.
        """
        if self.backend == "kfp" and not self.kfp_host:
            raise ConfigError("MLPLATFORM_WEBHOOK_BACKEND=kfp needs MLPLATFORM_WEBHOOK_KFP_HOST (the KFP API URL)")


# --- Alertmanager webhook payload, version 4 (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Alert(_Strict):
    """One alert of a notification."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1, pattern=r"^[A-Za-z0-9]+$")

    @field_validator("labels")
    @classmethod
    def _has_alertname(cls, value: dict[str, str]) -> dict[str, str]:
        if not value.get("alertname"):
            raise ValueError("labels.alertname is required")
        return value

    @property
    def alertname(self) -> str:
        return self.labels["alertname"]


class AlertmanagerPayload(_Strict):
    """A notification as Alertmanager's webhook receiver sends it (version "4")."""

    version: Literal["4"]
    groupKey: str
    truncatedAlerts: int = Field(default=0, ge=0)
    status: Literal["firing", "resolved"]
    receiver: str
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[Alert] = Field(min_length=1)


class PayloadInvalid(WebhookError):
    """The request body is not an Alertmanager webhook payload v4; the message names each bad field."""


def parse_payload(body: bytes) -> AlertmanagerPayload:
    """Validate a notification body.

    Raises:
        PayloadInvalid: Not JSON, or a field missing or of the wrong type/value (each named, e.g. `alerts.0.status`).
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadInvalid(f"the body is not JSON ({exc}); Alertmanager sends its webhook payload as JSON") from None
    try:
        return AlertmanagerPayload.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "body"
            problems.append(f"{where}: {err['msg']}")
        raise PayloadInvalid("not an Alertmanager webhook payload (version 4): " + "; ".join(problems)) from None


# --- the trigger logic


class WebhookMetrics:
    """The receiver's metric families, in their own registry (served on /metrics)."""

    def __init__(self, retrain_alertnames: list[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.alerts = Counter(
            "mlplatform_webhook_alerts_total",
            "Alerts received, by alertname (retraining triggers; others as 'other'), status and what was done "
            "(started, deduplicated_active, deduplicated_cooldown, ignored).",
            ("alertname", "status", "action"),
            registry=self.registry,
        )
        self.notifications = Counter(
            "mlplatform_webhook_notifications_total",
            "Notifications (HTTP requests) received, by outcome (accepted, invalid, unauthorized, too_large, "
            "timeout: the body did not arrive in time, unavailable: too many bodies in transit).",
            ("outcome",),
            registry=self.registry,
        )
        self.runs = Counter(
            "mlplatform_retraining_runs_total",
            "Retraining runs by trigger (alert:<alertname>) and outcome (started, succeeded, failed).",
            ("trigger", "outcome"),
            registry=self.registry,
        )
        self.active = Gauge(
            "mlplatform_retraining_active_runs", "Retraining runs started and not finished.", registry=self.registry
        )
        self.last_trigger = Gauge(
            "mlplatform_retraining_last_trigger_timestamp_seconds",
            "Unix time the last retraining run was started (0: never).",
            registry=self.registry,
        )
        for name in retrain_alertnames:  # every series exists from the start: increase() sees the first run
            for outcome in RUN_OUTCOMES:
                self.runs.labels(trigger=f"alert:{name}", outcome=outcome)
            for action in ACTIONS:
                self.alerts.labels(alertname=name, status="firing", action=action)
        for outcome in NOTIFICATION_OUTCOMES:
            self.notifications.labels(outcome=outcome)


@dataclass(frozen=True)
class Decision:
    """What the receiver did with one alert."""

    alertname: str
    fingerprint: str
    model_name: str
    status: str
    action: str
    run_name: str | None = None


@dataclass
class _Active:
    run_name: str
    trigger: str
    started_at: float
    handle: RunHandle | None = None  # None while the launcher thread is creating it


class Retrainer:
    """Decides which alerts start a retraining run, starts them off-thread and follows their state.

    Args:
        settings: Receiver settings (trigger alert names, cooldown, run parameters).
        launcher: Starts the runs (local process, KFP API, or a function).
        metrics: Where decisions and run outcomes are counted.
        clock: Unix time (tests pass a fake).
    """

    def __init__(
        self,
        settings: WebhookSettings,
        launcher: Launcher,
        metrics: WebhookMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.launcher = launcher
        self.metrics = metrics or WebhookMetrics(settings.retrain_alertnames)
        self.clock = clock
        self._lock = threading.Lock()
        self._active: dict[str, _Active] = {}
        self._last_start: dict[str, float] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrain-launcher")
        self.history: list[Decision] = []

    def handle(self, payload: AlertmanagerPayload) -> list[Decision]:
        """Act on one notification; returns at once (a run is created on the launcher thread)."""
        decisions = []
        with self._lock:
            self._poll_locked()
            for alert in payload.alerts:
                decisions.append(self._decide(alert))
            self.history.extend(decisions)
        return decisions

    def _decide(self, alert: Alert) -> Decision:
        name = alert.alertname
        model = alert.labels.get("model_name", "")
        retrain = name in self.settings.retrain_alertnames
        label = name if retrain else OTHER_ALERT

        def decided(action: str, run_name: str | None = None) -> Decision:
            self.metrics.alerts.labels(alertname=label, status=alert.status, action=action).inc()
            return Decision(name, alert.fingerprint, model, alert.status, action, run_name)

        if alert.status != "firing" or not retrain:
            return decided("ignored")
        if model in self._active:
            return decided("deduplicated_active", self._active[model].run_name)
        last = self._last_start.get(model)
        if last is not None and self.clock() - last < self.settings.cooldown_seconds:
            return decided("deduplicated_cooldown")
        trigger = f"alert:{name}"
        params = parse_params({**self.settings.pipeline_params, "trigger": f"{trigger}@{alert.fingerprint}"})
        run_name = f"retrain-{name.lower()}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        now = self.clock()
        self._active[model] = _Active(run_name, trigger, now)
        self._last_start[model] = now
        self.metrics.runs.labels(trigger=trigger, outcome="started").inc()
        self.metrics.last_trigger.set(now)
        self.metrics.active.set(len(self._active))
        self._executor.submit(self._launch, model, params, run_name)
        return decided("started", run_name)

    def _launch(self, model: str, params: PipelineParams, run_name: str) -> None:
        try:
            handle = self.launcher.launch(params, run_name)
        except Exception:
            log.exception("could not start retraining run %s", run_name)
            with self._lock:
                active = self._active.pop(model, None)
                self._last_start.pop(model, None)  # a failed start does not block the next alert
                if active is not None:
                    self.metrics.runs.labels(trigger=active.trigger, outcome="failed").inc()
                self.metrics.active.set(len(self._active))
            return
        with self._lock:
            if model in self._active:
                self._active[model].handle = handle

    def poll(self) -> None:
        """Update the state of the active runs; finished ones are counted and leave the active set."""
        with self._lock:
            self._poll_locked()

    def _poll_locked(self) -> None:
        for model, active in list(self._active.items()):
            if active.handle is None:
                continue
            try:
                state = active.handle.state()
            except Exception:  # the KFP API did not answer: ask again next time
                log.warning("could not read the state of run %s", active.run_name, exc_info=True)
                continue
            if state != "running":
                del self._active[model]
                self.metrics.runs.labels(trigger=active.trigger, outcome=state).inc()
                log.info("retraining run %s %s", active.run_name, state)
        self.metrics.active.set(len(self._active))

    def active_runs(self) -> list[str]:
        """Names of the runs started and not finished."""
        with self._lock:
            return [a.run_name for a in self._active.values()]

    def wait_idle(self, timeout_seconds: float) -> bool:
        """Poll until no run is active (tests, shutdown); True when idle in time."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            self.poll()
            if not self.active_runs():
                return True
            time.sleep(0.1)  # polling interval while waiting for runs
        return False

    def close(self) -> None:
        """Stop the launcher thread (runs already started keep running)."""
        self._executor.shutdown(wait=True)


# --- HTTP


def launcher_for(settings: WebhookSettings, platform: PlatformSettings) -> Launcher:
    """The launcher of the configured backend."""
    settings.check()
    if settings.backend == "kfp":
        assert settings.kfp_host is not None
        return KfpLauncher(settings.kfp_host, settings.kfp_experiment, settings.kfp_pipeline_package)
    return LocalLauncher(platform)


def create_app(retrainer: Retrainer, settings: WebhookSettings) -> FastAPI:
    """The FastAPI app: POST /alerts (Alertmanager webhook), GET /healthz, GET /metrics.

    A background thread polls the runs every `run_poll_interval_seconds` while the app runs.
    """
    metrics = retrainer.metrics

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()

        def poll_loop() -> None:
            while not stop.wait(settings.run_poll_interval_seconds):
                retrainer.poll()

        poller = threading.Thread(target=poll_loop, name="retrain-poller", daemon=True)
        poller.start()
        yield
        stop.set()
        poller.join(timeout=5)
        retrainer.close()

    app = FastAPI(title="mlplatform alert webhook", lifespan=lifespan, docs_url=None, redoc_url=None)

    def error(status: int, outcome: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.notifications.labels(outcome=outcome).inc()
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.post("/alerts")
    async def alerts(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            payload = parse_payload(body)
        except PayloadInvalid as exc:
            return error(400, "invalid", str(exc))
        decisions = retrainer.handle(payload)
        metrics.notifications.labels(outcome="accepted").inc()
        return JSONResponse({"decisions": [d.__dict__ for d in decisions]})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "backend": settings.backend, "active_runs": retrainer.active_runs()}

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        body, content_type = metrics_payload(metrics.registry)
        return Response(body, media_type=content_type)

    app.add_middleware(
        Guard,
        token=settings.auth_token.get_secret_value() if settings.auth_token else None,
        protected=lambda path: path == "/alerts",
        unauthorized_message="missing or wrong bearer token: set http_config.authorization in the Alertmanager "
        "receiver",
        on_reject=lambda outcome: metrics.notifications.labels(outcome=outcome).inc(),
        limits=settings,
    )
    return app


def serve(settings: WebhookSettings | None = None, platform: PlatformSettings | None = None) -> None:
    """Run the receiver until SIGTERM/SIGINT (uvicorn).

    Raises:
        ConfigError: Invalid settings (e.g. backend kfp without a host).
    """
    import uvicorn

    settings = settings or WebhookSettings()
    platform = platform or PlatformSettings()
    retrainer = Retrainer(settings, launcher_for(settings, platform))
    app = create_app(retrainer, settings)
    log.info("alert webhook on %s:%s (backend %s)", settings.host, settings.port, settings.backend)
    uvicorn.run(app, port=settings.port, log_level="info", access_log=False, **uvicorn_options(settings))


def main() -> None:
    """`python -m mlplatform.feedback.webhook`: settings from MLPLATFORM_WEBHOOK_* and MLPLATFORM_*."""
    init_process()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve()
    except (ConfigError, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
