"""Running the training pipeline: locally with kfp.local, or on a Kubeflow Pipelines endpoint."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlplatform.params import PipelineParams
from mlplatform.settings import PlatformSettings


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit of the working tree, None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@dataclass(frozen=True)
class LocalRun:
    """Result of a local pipeline run."""

    summary: dict[str, Any]
    pipeline_root: Path
    settings: PlatformSettings


def run_local(params: PipelineParams, settings: PlatformSettings) -> LocalRun:
    """Run the training pipeline with kfp.local, each step a subprocess in this Python environment.

    The components read their settings from MLPLATFORM_* variables, so the settings in force here
    are exported to them (work dir as an absolute path, the git commit for lineage).
    """
    from kfp import local

    from pipelines.training import training_pipeline

    work_dir = settings.resolved_work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    env = {f"MLPLATFORM_{k.upper()}": str(v) for k, v in settings.model_dump(exclude_none=True).items()}
    env["MLPLATFORM_WORK_DIR"] = str(work_dir)
    env.setdefault("MLPLATFORM_GIT_COMMIT", git_commit() or "unknown")
    os.environ.update(env)
    pipeline_root = work_dir / "kfp"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=True,
    )
    task = training_pipeline(**params.model_dump())
    return LocalRun(json.loads(task.output), pipeline_root, settings.model_copy(update={"work_dir": work_dir}))


def submit(host: str, package: Path, params: PipelineParams, experiment: str, run_name: str | None) -> str:
    """Create a run of a compiled pipeline on a Kubeflow Pipelines endpoint; returns the run id."""
    import kfp

    client = kfp.Client(host=host)
    result = client.create_run_from_pipeline_package(
        str(package),
        arguments=params.model_dump(),
        run_name=run_name,
        experiment_name=experiment,
    )
    return result.run_id
