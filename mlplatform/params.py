"""Parameters of a training pipeline run: one definition with ranges, shared by the pipeline and the CLI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlplatform.errors import ConfigError
from mlplatform.settings import describe

#: What a `trigger` may look like: a kind, optionally `:<name>` and `@<alert fingerprint>`.
TRIGGER_PATTERN = r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?(@[A-Za-z0-9]+)?$"


class PipelineParams(BaseModel):
    """What a training run is asked to do. The pipeline's parameter defaults are these defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_transactions: int = Field(100_000, ge=1_000, le=50_000_000, description="Transactions to generate.")
    n_days: int = Field(90, ge=7, le=3_650, description="Days the transactions span.")
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Seed of the generator and of training.")
    fraud_rate: float = Field(0.02, ge=0.001, le=0.2, description="Share of fraud to generate.")
    drift: float = Field(0.0, ge=0.0, le=1.0, description="Distribution shift to generate.")
    source_path: str = Field("", description="Existing raw snapshot (Parquet) instead of generating.")
    validation_days: int = Field(10, ge=1, le=365, description="Days before the test window for validation.")
    test_days: int = Field(10, ge=1, le=365, description="Last days held out for the test.")
    warmup_days: int = Field(
        30,  # mlplatform.features.compute.MERCHANT_WINDOW_DAYS (tests/unit/test_cli_and_pipeline.py keeps them equal)
        ge=0,
        le=365,
        description="First days of the data left out of training: the 30-day aggregates are still filling "
        "there, while served traffic always has full windows (a model and drift reference trained on them "
        "would see drift in healthy traffic).",
    )
    max_epochs: int = Field(30, ge=1, le=1_000, description="Upper bound on training epochs.")
    batch_size: int = Field(1024, ge=16, le=1_048_576, description="Rows per training step.")
    learning_rate: float = Field(0.002, gt=0.0, lt=1.0, description="AdamW learning rate.")
    tuning_run_id: str = Field(
        "",
        pattern=r"^([0-9a-f]{32})?$",
        description="MLflow run id of `mlplatform tune`: train with its best hyperparameters instead of "
        "max_epochs, batch_size and learning_rate; empty: the defaults.",
    )
    trigger: str = Field(
        "manual",
        min_length=1,
        max_length=200,
        pattern=TRIGGER_PATTERN,
        description="Why the run was started: manual, schedule, or alert:<alertname>[@<fingerprint>] "
        "(the webhook receiver); recorded as MLflow run tags (trigger_tags).",
    )

    @model_validator(mode="after")
    def _windows_fit(self) -> PipelineParams:
        held_out = self.warmup_days + self.validation_days + self.test_days
        if not self.source_path and held_out >= self.n_days:
            raise ValueError(
                f"warmup_days + validation_days + test_days ({self.warmup_days} + {self.validation_days} + "
                f"{self.test_days}) must be shorter than n_days ({self.n_days}) so that training data remains"
            )
        return self


DEFAULTS = PipelineParams()


def trigger_tags(trigger: str) -> dict[str, str]:
    """The MLflow run tags that record why a run was started.

    `alert:MlplatformFeatureDrift@3f2a` -> `{"trigger": "alert:MlplatformFeatureDrift", "trigger_fingerprint": "3f2a"}`;
    `schedule` -> `{"trigger": "schedule"}`.
    """
    kind, _, fingerprint = trigger.partition("@")
    return {"trigger": kind, **({"trigger_fingerprint": fingerprint} if fingerprint else {})}


def parse_params(values: dict[str, Any]) -> PipelineParams:
    """Validate run parameters.

    Raises:
        ConfigError: Naming each invalid parameter and what is wrong with it.
    """
    try:
        return PipelineParams(**values)
    except ValidationError as exc:
        raise ConfigError(describe(exc, "pipeline parameter(s)")) from None
