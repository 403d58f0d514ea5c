"""Settings of the serving containers (transformer and predictor), read from MLPLATFORM_SERVING_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlplatform.http import HttpBodySettings

Role = Literal["stable", "canary"]


class ServingSettings(HttpBodySettings, BaseSettings):
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
    feature_store_failure: Literal["fallback", "reject"] = Field(
        default="fallback",
        description="When the online store fails or times out: score with default features and flag the "
        "answer (fallback), or answer 503 (reject).",
    )
    predictor_timeout_seconds: float = Field(
        default=2.0, gt=0, description="Deadline of one call from the transformer to the predictor."
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
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        description="Kafka brokers (host:port,...): when set, the transformer publishes each answered transaction "
        "and its prediction to the event stream (docs/adr/0018-event-stream.md); unset publishes nothing.",
    )
    event_spool_dir: Path | None = Field(
        default=None,
        description="Where events wait on local disk while the broker cannot take them (needed with "
        "kafka_bootstrap_servers; on a cluster a volume that outlives the container).",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="How the transformer connects to the brokers (TLS and/or SASL)."
    )
    kafka_ssl_ca_location: Path | None = Field(
        default=None, description="CA certificate file of the brokers (TLS); unset uses the system's CAs."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism with the SASL_* protocols (Strimzi's: SCRAM-SHA-512)."
    )
    kafka_sasl_username: str | None = Field(default=None, description="The transformer's Kafka user (SASL).")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="That user's password (SASL).")
    access_log: bool = Field(
        default=False,
        description="Log one line per request (uvicorn access log and KServe's timing lines); off by default: "
        "at hundreds of requests per second they cost more CPU than the model.",
    )
    auth_token: SecretStr | None = Field(
        default=None, description="When set, every inference request needs `Authorization: Bearer <token>`."
    )

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka settings of the connection beyond the brokers' addresses (TLS, SASL)."""
        config = {"security.protocol": self.kafka_security_protocol}
        if self.kafka_ssl_ca_location is not None:
            config["ssl.ca.location"] = str(self.kafka_ssl_ca_location)
        if self.kafka_security_protocol.startswith("SASL"):
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
            config["sasl.username"] = self.kafka_sasl_username or ""
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else ""
        return config

    @model_validator(mode="after")
    def _events_need_a_spool(self) -> ServingSettings:
        if self.kafka_bootstrap_servers and self.event_spool_dir is None:
            raise ValueError(
                "MLPLATFORM_SERVING_KAFKA_BOOTSTRAP_SERVERS needs MLPLATFORM_SERVING_EVENT_SPOOL_DIR (where events "
                "wait while the broker is away)"
            )
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"MLPLATFORM_SERVING_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "MLPLATFORM_SERVING_KAFKA_SASL_USERNAME and MLPLATFORM_SERVING_KAFKA_SASL_PASSWORD"
            )
        return self
