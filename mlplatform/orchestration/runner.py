"""Running the training pipeline: locally with kfp.local, or on a Kubeflow Pipelines endpoint."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlplatform.errors import ConfigError, MlPlatformError
from mlplatform.orchestration.progress import PipelineProgress, strip_ansi
from mlplatform.params import PipelineParams
from mlplatform.rollout.targets import target_for
from mlplatform.settings import PlatformSettings, to_env


class OrchestrationError(MlPlatformError):
    """The Kubeflow Pipelines API refused a run or could not be reached; the message names the endpoint."""


class PipelineFailed(OrchestrationError):
    """A step of the local pipeline run failed; its log (the tail is shown, the path printed) says why."""


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
    log_path: Path | None = None


@contextlib.contextmanager
def _exported(env: dict[str, str]) -> Iterator[None]:
    """`env` in this process's environment while the run lasts, as it was afterwards.

    kfp.local's SubprocessRunner starts every step with this process's environment and takes no other, so the
    settings reach the steps this way; restoring it keeps them from leaking into whatever the process does next.
    """
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_local(params: PipelineParams, settings: PlatformSettings, progress: bool = False) -> LocalRun:
    """Run the training pipeline with kfp.local, each step a subprocess in this Python environment.

    The components read their settings from MLPLATFORM_* variables, so the settings in force here
    are exported to them (work dir as an absolute path, the git commit for lineage).

    Args:
        progress: Write every step's output to `<work dir>/logs/pipeline-<time>.log` and show one line per
            finished step instead (mlplatform.orchestration.progress); kfp.local streams it all otherwise.
    """
    from kfp import local

    work_dir = settings.resolved_work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    env = to_env(settings)
    env["MLPLATFORM_WORK_DIR"] = str(work_dir)
    env.setdefault("MLPLATFORM_GIT_COMMIT", git_commit() or "unknown")
    # The target's canary settings (locally: seconds-long windows), validated here rather than in the deploy step.
    env.update(to_env(target_for(settings).canary_settings()))
    pipeline_root = work_dir / "kfp"
    watcher = PipelineProgress(work_dir / "logs", pipeline_root) if progress else None
    try:
        with _exported(env), watcher or contextlib.nullcontext():
            from pipelines.training import training_pipeline  # kfp and every component: seconds to import

            if watcher is not None:
                watcher.expect(len(training_pipeline.pipeline_spec.root.dag.tasks))
            local.init(
                runner=local.SubprocessRunner(use_venv=False),
                pipeline_root=str(pipeline_root),
                raise_on_error=True,
            )
            task = training_pipeline(**params.model_dump())
    except RuntimeError as exc:  # kfp.local raises it when a task fails; the task's log (tail shown) says why
        raise PipelineFailed(f"pipeline failed: {strip_ansi(str(exc))}") from exc
    return LocalRun(
        json.loads(task.output),
        pipeline_root,
        settings.model_copy(update={"work_dir": work_dir}),
        watcher.log_path if watcher is not None else None,
    )


def compile_package(output: Path | None = None, name: str = "training") -> Path:
    """Compile a pipeline (see `pipelines.compile_pipeline`) to KFP IR YAML; a temporary file when `output` is None."""
    from pipelines import compile_pipeline  # the components and kfp's compiler: seconds to import, only when used

    if output is None:
        output = Path(tempfile.mkdtemp(prefix="mlplatform-pipeline-")) / f"{name}.yaml"
    return compile_pipeline(output, name)


def submit(
    host: str,
    package: Path,
    params: PipelineParams,
    experiment: str,
    run_name: str | None,
    client: Any | None = None,
) -> str:
    """Create a run of a compiled pipeline on a Kubeflow Pipelines endpoint; returns the run id.

    Args:
        client: A `kfp.Client` to reuse; one for `host` is made otherwise.
    """
    import kfp

    try:
        client = client or kfp.Client(host=host)
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=params.model_dump(),
            run_name=run_name,
            experiment_name=experiment,
        )
    except Exception as exc:  # the KFP client raises ApiException, urllib3 and connection errors
        raise OrchestrationError(f"could not create the run on {host}: {exc}") from exc
    return str(result.run_id)


#: KFP's cron format (robfig/cron with seconds): second minute hour day-of-month month day-of-week.
CRON_FIELDS = 6


def schedule(
    host: str,
    package: Path,
    params: PipelineParams,
    experiment: str,
    job_name: str,
    cron: str,
    max_concurrency: int = 1,
    client: Any | None = None,
) -> str:
    """Create a recurring run (scheduled retraining) of a compiled pipeline on Kubeflow Pipelines.

    Args:
        host: KFP API endpoint.
        package: Compiled pipeline YAML.
        params: Run parameters; `trigger` should be "schedule".
        experiment: Experiment the recurring run and its runs are filed under (created when missing).
        job_name: Name of the recurring run.
        cron: Six-field KFP cron expression, e.g. "0 0 3 * * *" (03:00 every day).
        max_concurrency: Runs of this schedule that may run at once.
        client: A `kfp.Client` to reuse; one for `host` is made otherwise.

    Returns:
        The recurring run id.

    Raises:
        ConfigError: The cron expression does not have six fields.
        OrchestrationError: The KFP API refused the recurring run or could not be reached.
    """
    import kfp

    if len(cron.split()) != CRON_FIELDS:
        raise ConfigError(
            f"cron {cron!r} has {len(cron.split())} fields; Kubeflow Pipelines expects six "
            "(second minute hour day-of-month month day-of-week), e.g. '0 0 3 * * *' for 03:00 every day"
        )
    try:
        client = client or kfp.Client(host=host)
        experiment_id = client.create_experiment(name=experiment).experiment_id
        recurring = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=job_name,
            description=f"Scheduled retraining ({cron}), trigger={params.trigger}",
            cron_expression=cron,
            max_concurrency=max_concurrency,
            no_catchup=True,
            params=params.model_dump(),
            pipeline_package_path=str(package),
        )
    except Exception as exc:  # the KFP client raises ApiException, urllib3 and connection errors
        raise OrchestrationError(f"could not create the recurring run on {host}: {exc}") from exc
    return str(recurring.recurring_run_id)
