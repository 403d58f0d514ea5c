"""Starting a rollout: the one wiring of backend, replayed traffic, controller, recorder and report.

The CLI (`mlplatform rollout start`) and the pipeline's deploy step both call `run_rollout`; the deploy
target of the settings (`mlplatform.rollout.targets.target_for`) gives the backend.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from mlplatform.http import HttpServerSettings
from mlplatform.http_servers import MetricsServer
from mlplatform.local.traffic import TrafficGenerator, sample_transactions
from mlplatform.registry import RegisteredVersion
from mlplatform.rollout.backends import report_root
from mlplatform.rollout.controller import ControlFile, Controller, MlflowRecorder
from mlplatform.rollout.report import RolloutReport
from mlplatform.rollout.settings import CanarySettings
from mlplatform.rollout.targets import target_for
from mlplatform.settings import PlatformSettings

#: Transactions sampled from the feature store to replay through a local endpoint during a rollout.
REPLAY_TRANSACTIONS = 2_000
#: The controller's /metrics is served only in a pipeline pod (Prometheus scrapes the pod's IP): all interfaces.
METRICS_LISTEN = HttpServerSettings(host="0.0.0.0")


def run_rollout(
    settings: PlatformSettings,
    canary_settings: CanarySettings,
    stable: RegisteredVersion,
    canary: RegisteredVersion,
    *,
    log: Callable[[str], Any] = print,
    port: int = 0,
    replay: bool = True,
    replay_seed: int = 0,
    serve_metrics: bool = False,
    on_open: Callable[[Any], Any] | None = None,
) -> RolloutReport:
    """Roll `canary` out against `stable` until it is promoted or rolled back; returns the report.

    A backend whose serving lives in this process (local) gets recent transactions replayed through its
    endpoint (nothing else calls it) and listens to the control file for decisions by hand.

    Args:
        log: Progress lines.
        port: Local only: port of the endpoint.
        replay: Local only: replay transactions through the endpoint while the rollout runs.
        replay_seed: Seed of the replayed sample.
        serve_metrics: Serve the controller's metrics on `canary_settings.metrics_port` (0: not served).
        on_open: Called with the backend once it serves (the CLI prints the endpoint).

    Raises:
        mlplatform.rollout.controller.RolloutError: The rollout could not run or its outcome could not be recorded.
    """
    root = report_root(settings)
    with target_for(settings).backend(canary_settings, stable, canary, port=port) as backend:
        if on_open is not None:
            on_open(backend)
        in_process = backend.in_process
        traffic: AbstractContextManager[Any] = (
            TrafficGenerator(
                backend.predict_url,
                sample_transactions(settings, REPLAY_TRANSACTIONS, seed=replay_seed),
                rps=canary_settings.local_replay_rps,
            )
            if in_process and replay
            else nullcontext()
        )
        with traffic:
            controller = Controller(
                backend,
                canary_settings,
                settings.registered_model_name,
                stable.version,
                canary.version,
                root,
                recorder=MlflowRecorder(settings.registered_model_name),
                control=ControlFile(root / "current.json") if in_process else None,
                log=log,
            )
            server = (
                MetricsServer(
                    controller.metrics.registry, canary_settings.metrics_port, METRICS_LISTEN, name="rollout-http"
                )
                if serve_metrics and canary_settings.metrics_port
                else None
            )
            if server is not None:  # in a pipeline pod: Prometheus scrapes the step while the rollout runs
                server.start()
            try:
                return controller.run()
            finally:
                if server is not None:
                    server.stop()
