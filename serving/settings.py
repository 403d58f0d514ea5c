"""Settings of the serving containers (transformer and predictor), read from MLPLATFORM_SERVING_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlplatform.events import KafkaConnection
from mlplatform.http import HttpBodySettings
from serving.tensor_hop import check_path

Role = Literal["stable", "canary"]


class ServingSettings(HttpBodySettings, KafkaConnection, BaseSettings):
    """What a serving process needs besides KServe's own flags (ports, model name, predictor host).

    Each field is read from the environment variable `MLPLATFORM_SERVING_<FIELD NAME>`; on a cluster
    the InferenceService sets them, locally `mlplatform serve` does. The address and the limits on slow or
    oversize requests are `HttpBodySettings`' (e.g. `MLPLATFORM_SERVING_HOST`, loopback unless set: the serving
    image sets 0.0.0.0); they apply to the REST server, the address also to the predictor's gRPC server.
    """

    model_config = SettingsConfigDict(env_prefix="MLPLATFORM_SERVING_", extra="forbid")

    model_version: str = Field(default="unknown", description="Registry version of the served model (a label).")
    role: Role = Field(default="stable", description="stable or canary: the traffic role, a metric label.")
    # transformer
    feast_repo_path: Path | None = Field(default=None, description="Feast repo; unset means the project's.")
    feast_config_file: str = Field(
        default="feature_store.yaml", description="Feast configuration file inside the repo."
    )
    feast_data_dir: Path | None = Field(
        default=None, description="Where Feast's relative paths resolve; unset means the current directory."
    )
    feature_timeout_seconds: float = Field(
        default=0.5, gt=0, description="Deadline of one online feature lookup (the whole batch)."
    )
    lean_online_reads: bool = Field(
        default=True,
        description="Read the Redis online store in one pipeline with the store's own methods instead of Feast's "
        "generic online read (mlplatform/features/online.py; about half the CPU; other stores always use Feast's).",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop",
        description="Event loop of the serving process: uvloop (libuv, about 5 % less CPU per request on both "
        "processes, measured in docs/adr/0016-serving-layout.md) or Python's own asyncio loop.",
    )
    feature_store_failure: Literal["fallback", "reject"] = Field(
        default="fallback",
        description="When the online store fails or times out: score with default features and flag the "
        "answer (fallback), or answer 503 (reject).",
    )
    predictor_timeout_seconds: float = Field(
        default=2.0, gt=0, description="Deadline of one call from the transformer to the predictor."
    )
    predictor_socket: Path | None = Field(
        default=None,
        description="Unix socket of the collocated predictor's tensor hop (serving/tensor_hop.py), in a folder both "
        "containers mount: the predictor listens on it and the transformer calls the model over it instead of "
        "HTTP. Unset: the transformer calls the predictor's v1 route over HTTP (the separate-pod layout).",
    )
    max_inflight_requests: int = Field(
        default=64,
        ge=1,
        description="Inference requests in progress at once; more are answered 503 with Retry-After at once "
        "(shedding load instead of queueing until clients time out). A request counts once its body has arrived.",
    )
    max_batch_size: int = Field(default=256, ge=1, description="Most transactions in one request.")
    max_amount: float = Field(
        default=1_000_000.0, gt=0, description="Largest plausible transaction amount; larger ones are rejected."
    )
    prediction_log_dir: Path | None = Field(
        default=None, description="Folder of the prediction log (JSON lines); unset disables it (tests only)."
    )
    prediction_log_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Rotate the current log file past this size."
    )
    prediction_log_max_age_seconds: float = Field(
        default=3600.0, gt=0, description="Rotate the current log file after this long."
    )
    prediction_log_flush_seconds: float = Field(
        default=0.2, gt=0, description="Longest time a record waits in memory before it is written."
    )
    event_spool_dir: Path | None = Field(
        default=None,
        description="Where events wait on local disk while the broker cannot take them (needed with "
        "kafka_bootstrap_servers; on a cluster a volume that outlives the container).",
    )
    access_log: bool = Field(
        default=False,
        description="Log one line per request (uvicorn access log and KServe's timing lines); off by default: "
        "at hundreds of requests per second they cost more CPU than the model.",
    )
    auth_token: SecretStr | None = Field(
        default=None, description="When set, every inference request needs `Authorization: Bearer <token>`."
    )

    @field_validator("predictor_socket")
    @classmethod
    def _socket_path_fits(cls, path: Path | None) -> Path | None:
        return None if path is None else check_path(path)

    @model_validator(mode="after")
    def _events_need_a_spool(self) -> ServingSettings:
        if self.kafka_bootstrap_servers and self.event_spool_dir is None:
            raise ValueError(
                "MLPLATFORM_SERVING_KAFKA_BOOTSTRAP_SERVERS needs MLPLATFORM_SERVING_EVENT_SPOOL_DIR (where events "
                "wait while the broker is away)"
            )
        return self
