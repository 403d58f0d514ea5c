"""`mlplatform rollout`: start a canary rollout, watch it, or decide it by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mlplatform import registry
from mlplatform.cli.common import (
    Target,
    WorkDir,
    console,
    guarded,
)
from mlplatform.deploy.artifact import resolve
from mlplatform.rollout import manual
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
    print(json.dumps(manual.status(settings), indent=2, default=str))


def _decide(action: str, version: str | None, record_only: bool, target: str | None, work_dir: Path | None) -> None:
    settings, canary = _rollout_settings(work_dir, target)
    manual.decide(action, settings, canary, version, record_only, log=console.print)


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
