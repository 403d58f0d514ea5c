"""`mlplatform rollout`: start a canary rollout, watch it, or decide it by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mlplatform import registry
from mlplatform.cli.common import (
    Target,
    WorkDir,
    console,
    guarded,
)
from mlplatform.deploy.artifact import resolve
from mlplatform.deploy.cluster import kubernetes_client
from mlplatform.deploy.inferenceservice import get, predictor_traffic
from mlplatform.errors import MlPlatformError
from mlplatform.rollout.backends import ClusterBackend, report_root
from mlplatform.rollout.controller import ControlFile
from mlplatform.rollout.settings import CanarySettings
from mlplatform.rollout.start import run_rollout
from mlplatform.settings import PlatformSettings, load_settings

rollout_app = typer.Typer(help="Canary rollouts: start one, watch it, or decide it by hand.", no_args_is_help=True)


def _rollout_settings(work_dir: Path | None, target: str | None) -> tuple[PlatformSettings, CanarySettings]:

    settings = load_settings(PlatformSettings, work_dir=work_dir, deploy_target=target)
    return settings, load_settings(CanarySettings)


@rollout_app.command("start")
@guarded
def rollout_start(
    version: Annotated[
        str | None, typer.Option("--version", help="Version to roll out (default: the challenger alias).")
    ] = None,
    target: Target = None,
    work_dir: WorkDir = None,
    port: Annotated[int, typer.Option("--port", help="Local: port of the splitter (the endpoint).")] = 8080,
    replay: Annotated[
        bool, typer.Option("--replay/--no-replay", help="Local: replay recent transactions through the endpoint.")
    ] = True,
) -> None:
    """Roll a version out against the champion, step by step, until it is promoted or rolled back."""

    settings, canary = _rollout_settings(work_dir, target)
    champion = resolve(settings, registry.CHAMPION)
    challenger = (
        registry.get_version(settings.registered_model_name, version)
        if version
        else resolve(settings, registry.CHALLENGER)
    )
    report = run_rollout(
        settings,
        canary,
        champion,
        challenger,
        log=console.print,
        port=port,
        replay=replay,
        on_open=lambda backend: (
            console.print(f"endpoint: {backend.predict_url}  (status: mlplatform rollout status)")
            if backend.in_process
            else None
        ),
    )
    from rich.markdown import Markdown

    console.print(Markdown(report.to_markdown()))


@rollout_app.command("status")
@guarded
def rollout_status(target: Target = None, work_dir: WorkDir = None) -> None:
    """The rollout in progress (local), or the InferenceService's traffic split (cluster), and the aliases."""

    settings, _ = _rollout_settings(work_dir, target)
    registry.configure(settings)
    aliases = {
        a: (v.version if (v := registry.get_alias(settings.registered_model_name, a)) else None)
        for a in (registry.CHAMPION, registry.CHALLENGER, registry.PREVIOUS)
    }
    if settings.deploy_target == "cluster":
        from dataclasses import asdict

        live = get(settings.registered_model_name, settings.deploy_namespace, kubernetes_client())
        status: dict[str, Any] = {"target": "cluster", **asdict(predictor_traffic(live))}
    else:
        status = ControlFile(report_root(settings) / "current.json").read() or {"state": "no rollout yet"}
    print(json.dumps({"aliases": aliases, **status}, indent=2, default=str))


def _decide(action: str, version: str | None, record_only: bool, target: str | None, work_dir: Path | None) -> None:
    """Promote or roll back by hand: through the running local controller, or directly on a cluster."""
    import time

    settings, canary = _rollout_settings(work_dir, target)
    name = settings.registered_model_name
    control = ControlFile(report_root(settings) / "current.json")
    running = control.read().get("state") in ("analysing", "waiting")
    if settings.deploy_target == "local" and running and not record_only:
        control.request(action)
        deadline = time.monotonic() + max(30.0, 3 * canary.analysis_interval_seconds)
        while time.monotonic() < deadline:
            state = control.read().get("state")
            if state in ("promoted", "rolled_back"):
                console.print(f"the running rollout is {state}: {control.read().get('detail')}")
                return
            time.sleep(0.5)
        raise MlPlatformError(f"the local rollout controller did not act on the {action} request within 30 s")
    champion = resolve(settings, registry.CHAMPION)
    target_version = registry.get_version(name, version) if version else resolve(settings, registry.CHALLENGER)
    if not record_only:
        if settings.deploy_target != "cluster":
            raise MlPlatformError(
                "no local rollout is running (its processes live in `mlplatform rollout start`); "
                "use --record-only to move the registry aliases only"
            )
        backend = ClusterBackend(settings, canary, champion, target_version)
        backend.promote() if action == "promote" else backend.rollback()
    moves = (
        registry.promote_champion(name, target_version.version)
        if action == "promote"
        else registry.retire_challenger(name, target_version.version)
    )
    registry.tag_version(
        name,
        target_version.version,
        {
            "rollout.outcome": "promoted" if action == "promote" else "rolled_back",
            "rollout.reason": f"{action} by hand",
        },
    )
    console.print(f"version {target_version.version}: {action} done; registry: {', '.join(moves) or 'unchanged'}")


RecordOnly = Annotated[
    bool, typer.Option("--record-only", help="Only move the registry aliases (the traffic is already decided).")
]

VersionOpt = Annotated[str | None, typer.Option("--version", help="Version concerned (default: the challenger).")]


@rollout_app.command("promote")
@guarded
def rollout_promote(
    version: VersionOpt = None,
    record_only: RecordOnly = False,
    target: Target = None,
    work_dir: WorkDir = None,
) -> None:
    """Promote now: the running rollout's canary (local), or the challenger on the cluster."""
    _decide("promote", version, record_only, target, work_dir)


@rollout_app.command("rollback")
@guarded
def rollout_rollback(
    version: VersionOpt = None,
    record_only: RecordOnly = False,
    target: Target = None,
    work_dir: WorkDir = None,
) -> None:
    """Roll back now: all traffic to the champion; the challenger alias is removed."""
    _decide("rollback", version, record_only, target, work_dir)
