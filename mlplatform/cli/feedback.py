"""`mlplatform webhook`: the Alertmanager receiver that starts retraining on a firing alert."""

from __future__ import annotations

from typing import Annotated

import typer

from mlplatform.cli.common import (
    console,
    guarded,
)
from mlplatform.feedback.webhook import WebhookSettings, serve
from mlplatform.settings import load_settings


@guarded
def webhook(
    port: Annotated[int | None, typer.Option("--port", help="HTTP port (default 9109).")] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="local (kfp.local child process) or kfp (Kubeflow Pipelines API).")
    ] = None,
    kfp_host: Annotated[str | None, typer.Option("--kfp-host", help="KFP API endpoint (backend kfp).")] = None,
    cooldown_seconds: Annotated[
        float | None, typer.Option("--cooldown-seconds", help="No second run for a model within this time.")
    ] = None,
) -> None:
    """Receive Alertmanager notifications; a firing drift or quality alert starts a retraining run."""
    import logging

    options = {"port": port, "backend": backend, "kfp_host": kfp_host, "cooldown_seconds": cooldown_seconds}
    settings = load_settings(WebhookSettings, **options)
    settings.check()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console.print(f"alert webhook on http://{settings.host}:{settings.port}/alerts (backend {settings.backend})")
    serve(settings)
