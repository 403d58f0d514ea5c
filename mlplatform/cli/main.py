"""The `mlplatform` command line: one Typer app assembled from one module per command group (no domain logic here)."""

from __future__ import annotations

import typer

from mlplatform.cli import features, feedback, monitor, pipeline, registry_access, rollout, run, score, serve, tune
from mlplatform.processes import init_process

app = typer.Typer(help="mlplatform: raw data to a registered fraud model and beyond.", no_args_is_help=True)
app.command("run")(run.run)
app.command("deploy")(serve.deploy)
app.command("serve")(serve.serve)
app.command("webhook")(feedback.webhook)
app.command("score")(score.score_command)
app.command("tune")(tune.tune)
app.command("train")(tune.train)
app.add_typer(features.features_app, name="features")
app.add_typer(pipeline.pipeline_app, name="pipeline")
app.add_typer(monitor.monitor_app, name="monitor")
app.add_typer(rollout.rollout_app, name="rollout")
app.add_typer(registry_access.registry_access_app, name="registry-access")


def main() -> None:
    """The `mlplatform` console script and `python -m mlplatform.cli`."""
    init_process()
    app()
