"""Settings of the monitor process (MLPLATFORM_MONITOR_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlplatform.events import KafkaConnection
from mlplatform.http import HttpServerSettings
from mlplatform.settings import PlatformSettings


class MonitorSettings(HttpServerSettings, KafkaConnection, BaseSettings):
    """What the monitor watches, how often, and where it serves its metrics.

    Each field is read from the environment variable `MLPLATFORM_MONITOR_<FIELD NAME>`. The MLflow
    tracking URI and the work dir come from `PlatformSettings` (`MLPLATFORM_MLFLOW_TRACKING_URI`,
    `MLPLATFORM_WORK_DIR`). The metrics endpoint's address (loopback unless `MLPLATFORM_MONITOR_HOST` says
    otherwise; the serving image sets 0.0.0.0) and its limits on slow clients are `HttpServerSettings`'. With
    `MLPLATFORM_MONITOR_KAFKA_BOOTSTRAP_SERVERS` the monitor reads predictions and labels from the event stream
    (`inputs.KafkaInputs`) and the two folders are not used.
    """

    model_config = SettingsConfigDict(env_prefix="MLPLATFORM_MONITOR_", extra="forbid")

    prediction_log_dir: Path | None = Field(
        default=None,
        description="Folder of the prediction log (predictions-*.jsonl); unset means <work_dir>/predictions, "
        "where local serving writes it.",
    )
    labels_dir: Path | None = Field(
        default=None, description="Folder of the label feed (labels-*.jsonl); unset means <work_dir>/labels."
    )
    model_dir: Path | None = Field(
        default=None,
        description="A model artifact folder whose reference statistics every version is compared with; unset "
        "means each version's own artifact from the MLflow registry (cached under <work_dir>/serving).",
    )
    model_name: str | None = Field(
        default=None,
        description="Registered model whose predictions are monitored; unset means MLPLATFORM_REGISTERED_MODEL_NAME.",
    )
    window_seconds: float = Field(
        default=3600.0, gt=0, description="Length of the live window drift is computed over (by served_at)."
    )
    quality_window_seconds: float = Field(
        default=7 * 86_400.0,
        gt=0,
        description="Length of the window whose labelled predictions quality is computed over (labels arrive "
        "days after the prediction, so it is longer than the drift window).",
    )
    interval_seconds: float = Field(default=60.0, gt=0, description="Time between two evaluations.")
    min_window_predictions: int = Field(
        default=200,
        ge=1,
        description="Predictions a version needs in the window before drift is computed; below that its drift "
        "gauges are absent (PSI over ten bins is noise on fewer).",
    )
    min_labelled_predictions: int = Field(
        default=50, ge=1, description="Labelled predictions a version needs before precision, recall, PR-AUC."
    )
    port: int = Field(default=9108, ge=0, le=65535, description="Port of /metrics and /healthz (0: any free port).")
    kafka_group_id: str = Field(
        default="mlplatform-monitor",
        min_length=1,
        description="Consumer group of the monitor when it reads the event stream (MLPLATFORM_MONITOR_KAFKA_"
        "BOOTSTRAP_SERVERS set) instead of the prediction log and label folders.",
    )

    def log_dir(self, platform: PlatformSettings) -> Path:
        """The prediction log folder in force."""
        return (self.prediction_log_dir or platform.resolved_work_dir / "predictions").expanduser().resolve()

    def label_dir(self, platform: PlatformSettings) -> Path:
        """The label folder in force."""
        return (self.labels_dir or platform.resolved_work_dir / "labels").expanduser().resolve()

    def monitored_model(self, platform: PlatformSettings) -> str:
        """The registered model name in force."""
        return self.model_name or platform.registered_model_name
