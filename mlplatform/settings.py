"""Settings of the pipeline components and the CLI, read from MLPLATFORM_* environment variables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlplatform.errors import ConfigError

#: The checkout (or installed source tree) the package lives in: feature_repo/, monitoring/ and helm/ are beside it.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: The Feast feature repo shipped with the project.
DEFAULT_FEATURE_REPO = PROJECT_ROOT / "feature_repo"

#: The image every pipeline component runs in on a cluster (built from images/components.Dockerfile).
DEFAULT_COMPONENT_IMAGE = "ghcr.io/mlplatform/mlplatform-components:0.1.0"
#: The image the serving transformer and predictor run in (built from images/serving.Dockerfile).


class PlatformSettings(BaseSettings):
    """Infrastructure settings of the training pipeline; per-run choices are pipeline parameters.

    Each field is read from the environment variable `MLPLATFORM_<FIELD NAME>`.
    """

    model_config = SettingsConfigDict(env_prefix="MLPLATFORM_", extra="forbid")

    work_dir: Path = Field(
        default=Path(".mlplatform"),
        description="Folder for local state: raw data, Feast stores, MLflow database and artifacts.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; unset means SQLite in <work_dir>/mlflow.db.",
    )
    mlflow_artifact_location: str | None = Field(
        default=None,
        description="Artifact root for a new experiment; unset means the tracking server's artifact store, "
        "or <work_dir>/mlartifacts with a local (SQLite) backend.",
    )
    mlflow_experiment: str = Field(default="fraud-detection", description="MLflow experiment name.")
    mlflow_request_timeout_seconds: int = Field(default=30, ge=1, description="Timeout of one MLflow HTTP request.")
    mlflow_max_retries: int = Field(
        default=3, ge=0, description="Retries (with backoff) of a failed MLflow HTTP request."
    )
    registered_model_name: str = Field(
        default="fraud-detector", description="Name of the model in the MLflow registry."
    )
    feast_repo_path: Path | None = Field(
        default=None, description="Feast feature repo; unset means the project's feature_repo/."
    )
    feast_config_file: str = Field(
        default="feature_store.yaml",
        description="Feast configuration file inside the repo (e.g. feature_store_redis_postgres.yaml).",
    )
    feast_data_dir: Path | None = Field(
        default=None,
        description="Where Feast's relative paths resolve (sources, registry file, SQLite); "
        "unset means <work_dir>/feast.",
    )
    component_image: str = Field(default=DEFAULT_COMPONENT_IMAGE, description="Image the pipeline components run in.")
    checkpoint_root: Path | None = Field(
        default=None,
        description="Root of training checkpoints; a run checkpoints under <root>/<pipeline run name>/train so that "
        "a retried train task resumes. On a cluster a volume that outlives the pod (a PVC); unset means "
        "<work_dir>/checkpoints.",
    )
    trainjob_runtime: str = Field(
        default="torch-distributed",
        description="Kubeflow Trainer ClusterTrainingRuntime that distributed training TrainJobs reference.",
    )
    trainjob_poll_interval_seconds: float = Field(
        default=15.0, gt=0, description="Time between two status reads of a running TrainJob."
    )
    trainjob_timeout_seconds: float = Field(
        default=86_400.0, gt=0, description="Longest wait for a TrainJob to complete; it is deleted after that."
    )
    git_commit: str | None = Field(default=None, description="Commit of the code that trained a model (a lineage tag).")
    deploy_target: Literal["local", "cluster"] = Field(
        default="local",
        description="Where deploy puts a model: local (artifact prepared for `mlplatform serve`) or cluster "
        "(InferenceService applied through the Kubernetes API).",
    )
    deploy_namespace: str = Field(default="mlplatform", description="Namespace of the InferenceService.")
    deploy_ready_timeout_seconds: float = Field(
        default=600.0, gt=0, description="How long deploy waits for the InferenceService to become Ready."
    )
    mlflow_artifacts_destination: str | None = Field(
        default=None,
        description="The tracking server's --artifacts-destination (e.g. s3://mlflow); maps mlflow-artifacts:/ "
        "model sources to a storageUri KServe's storage initializer can fetch.",
    )
    validate_max_feature_psi: float = Field(
        default=1.0,
        gt=0,
        description="Validate data: largest PSI of a training feature against the champion's training reference "
        "(a larger shift fails the run, unless an alert started it: then the data is expected to have moved).",
    )
    gate_min_roc_auc: float = Field(
        default=0.85, ge=0, le=1, description="Promotion gate: lowest acceptable test ROC-AUC."
    )
    gate_min_pr_auc: float = Field(
        default=0.30, ge=0, le=1, description="Promotion gate: lowest acceptable test PR-AUC."
    )
    gate_min_baseline_ratio: float = Field(
        default=1.1,
        ge=0,
        description="Promotion gate: test PR-AUC must be at least this multiple of the rule baseline's.",
    )
    gate_max_regression: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Promotion gate: largest PR-AUC drop allowed against the champion on the same test set.",
    )
    gate_slice_max_regression: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Slice gate: PR-AUC or recall drop against the champion allowed on an important slice, before "
        "the slice's own noise (gate_confidence_z standard errors of the paired difference) is added to it.",
    )
    gate_confidence_z: float = Field(
        default=1.645,
        ge=0,
        description="Slice and inclusion gates: standard errors of a difference its tolerance allows for "
        "(1.645: one-sided 95 %); the slice gate raises it for the number of slices it compares (Bonferroni).",
    )
    gate_slice_min_positives: int = Field(
        default=10,
        ge=1,
        description="Slice and inclusion gates: frauds a slice or segment needs in the test set to be gated "
        "(fewer: reported as not gated).",
    )
    gate_max_segment_recall_gap: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="Inclusion gate: largest recall difference between customer segments (its lower confidence "
        "bound beyond this refuses the model).",
    )
    gate_max_segment_fpr_gap: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Inclusion gate: largest false-positive-rate difference between customer segments (its lower "
        "confidence bound beyond this refuses the model).",
    )

    @field_validator("mlflow_experiment", "registered_model_name")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    @property
    def resolved_work_dir(self) -> Path:
        """The work dir as an absolute path."""
        return self.work_dir.expanduser().resolve()

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI in force."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.resolved_work_dir / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str | None:
        """The artifact root used when the experiment is created.

        With a tracking server (http/https URI) and no explicit location, None: the server's own
        artifact store (proxied), so that every pod reads the same artifacts.
        """
        if self.mlflow_artifact_location:
            return self.mlflow_artifact_location
        if self.tracking_uri.startswith(("http://", "https://")):
            return None
        return (self.resolved_work_dir / "mlartifacts").as_uri()

    def checkpoint_dir(self, run_key: str, task: str = "train") -> Path:
        """Where `task` of the pipeline run `run_key` (its unique name, the same for every retry) checkpoints."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_key).strip(".")
        if not safe:
            raise ValueError(f"cannot derive a checkpoint directory from the run key {run_key!r}")
        root = self.checkpoint_root or self.resolved_work_dir / "checkpoints"
        return root.expanduser().resolve() / safe / task

    @property
    def feast_repo(self) -> Path:
        """The feature repo in force."""
        return (self.feast_repo_path or DEFAULT_FEATURE_REPO).resolve()

    @property
    def feast_data(self) -> Path:
        """The Feast data directory in force."""
        return (self.feast_data_dir or self.resolved_work_dir / "feast").resolve()


S = TypeVar("S", bound=BaseSettings)


def describe(exc: ValidationError, what: str, env_prefix: str = "") -> str:
    """One line naming each invalid field (and its environment variable) and what is wrong with it."""
    problems = []
    for err in exc.errors():
        message = str(err["msg"]).removeprefix("Value error, ")
        if not err["loc"]:  # a rule over several fields names them itself
            problems.append(message)
            continue
        name = ".".join(str(p) for p in err["loc"])
        var = f" ({env_prefix}{name.upper()})" if env_prefix else ""
        got = f" (got {err['input']!r})" if err["type"] != "missing" else ""
        problems.append(f"{name}{var}: {message}{got}")
    return f"invalid {what}: " + "; ".join(problems)


def load_settings(cls: type[S], **given: Any) -> S:
    """`cls` from its environment variables, with the values a person gave on top (None means not given).

    The order is the documented one: a given value (CLI option) wins over the environment, which wins over
    the built-in default.

    Raises:
        ConfigError: Naming each invalid field and its environment variable.
    """
    try:
        return cls(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix") or "")
        raise ConfigError(describe(exc, f"{cls.__name__} setting(s)", prefix)) from None


def to_env(settings: BaseModel, prefix: str | None = None) -> dict[str, str]:
    """The environment variables that give a child process the same `settings` (unset fields left out).

    Lists and mappings are JSON, as pydantic-settings reads them; paths are absolute.
    """
    if prefix is None:
        prefix = str(getattr(settings, "model_config", {}).get("env_prefix") or "")
    env = {}
    for name, value in settings.model_dump(exclude_none=True).items():
        if isinstance(value, Path):
            value = value.expanduser().resolve()
        env[f"{prefix}{name.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return env
