"""`mlplatform deploy` and `mlplatform serve`: a registered version on a cluster or on localhost."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from mlplatform.cli.common import (
    Alias,
    WorkDir,
    console,
    err_console,
    guarded,
)
from mlplatform.local.serving import serve_local
from mlplatform.rollout.targets import target_for
from mlplatform.settings import PlatformSettings, load_settings


@guarded
def deploy(
    alias: Alias = "champion",
    target: Annotated[
        str | None, typer.Option("--target", help="local or cluster (default: MLPLATFORM_DEPLOY_TARGET, local).")
    ] = None,
    canary_percent: Annotated[
        int | None, typer.Option("--canary-percent", min=0, max=100, help="Traffic share of this version.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the InferenceService; apply nothing.")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the service is Ready.")] = True,
    work_dir: WorkDir = None,
    port: Annotated[int, typer.Option("--port", help="Local transformer port.")] = 8080,
) -> None:
    """Deploy the version behind a registry alias: an InferenceService on a cluster, or processes on localhost."""
    import yaml

    settings = load_settings(PlatformSettings, work_dir=work_dir, deploy_target=target)
    target = target_for(settings)
    if dry_run:
        print(yaml.safe_dump(target.preview(alias, canary_percent), sort_keys=False))
        return
    if target.in_process:  # locally, deploying means serving from this process until Ctrl-C
        _serve_until_interrupted(settings, alias, port)
        return
    result = target.deploy(alias, canary_percent, wait=wait)
    print(json.dumps({k: v for k, v in json.loads(result.to_json()).items() if k != "manifest"}))


@guarded
def serve(
    alias: Alias = "champion",
    port: Annotated[int, typer.Option("--port", help="Port of the endpoint (the transformer).")] = 8080,
    work_dir: WorkDir = None,
) -> None:
    """Serve a registered version on localhost (transformer + predictor) until Ctrl-C."""
    settings = load_settings(PlatformSettings, work_dir=work_dir)
    _serve_until_interrupted(settings, alias, port)


def _serve_until_interrupted(settings: PlatformSettings, alias: str, port: int) -> None:
    import signal
    import time

    # SIGTERM (kubectl, systemd, a supervisor) is Ctrl-C from the first moment: one that arrives while the
    # servers start stops those already started instead of killing this process and leaving them running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        deployed, service = serve_local(settings, alias, port=port)
    except KeyboardInterrupt:
        console.print("stopped before the servers were ready")
        return
    crashed = False
    try:  # from here on, whatever is interrupted, the servers are stopped
        console.print(
            f"serving models:/{deployed.model_name} version {deployed.model_version} ({alias}) at "
            f"{service.predict_url}\n  metrics: {service.url}/metrics   logs: {service.log_dir}   Ctrl-C stops"
        )
        while not (crashed := any(p.poll() is not None for p in service.processes.values())):
            time.sleep(1.0)
        err_console.print(f"[red]a serving process exited; see {service.log_dir}[/]")
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the graceful stop short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        codes = service.stop()
        console.print(f"stopped ({codes})")
    if crashed:
        raise typer.Exit(1)
