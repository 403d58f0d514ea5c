"""Settings of canary rollouts (MLPLATFORM_CANARY_*): traffic steps, thresholds, waits."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlplatform.settings import load_settings


class CanarySettings(BaseSettings):
    """Traffic steps and the thresholds one analysis step applies.

    Each field is read from the environment variable `MLPLATFORM_CANARY_<FIELD NAME>` (lists as JSON,
    e.g. MLPLATFORM_CANARY_TRAFFIC_STEPS_PERCENT='[10, 50, 100]').
    """

    model_config = SettingsConfigDict(env_prefix="MLPLATFORM_CANARY_", extra="forbid")

    traffic_steps_percent: list[int] = Field(
        default=[10, 25, 50, 100],
        description="Share of traffic the canary serves at each step; every step below 100 is analysed, reaching "
        "100 is the promotion.",
    )
    step_window_seconds: int = Field(
        default=300,
        ge=2,
        description="Shortest time a step runs, and the longest metrics window it is analysed over; a step is "
        "promoted only after it, a failing check rolls back as soon as there is enough evidence.",
    )
    analysis_interval_seconds: float = Field(
        default=15.0, gt=0, description="Time between two analyses of a running step."
    )
    step_max_wait_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Longest a step may go without a verdict (too little traffic, metrics unavailable); then the "
        "rollout is rolled back as inconclusive, never promoted.",
    )
    ready_timeout_seconds: float = Field(
        default=600.0, gt=0, description="How long a traffic change may take to be in force (revisions ready)."
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus the analysis queries (required on a cluster); unset locally: a local Prometheus "
        "server is started when the Debian package is installed, else the predictors' /metrics are read directly.",
    )
    prometheus_scrape_interval_seconds: float = Field(
        default=15.0, gt=0, description="Scrape interval of that Prometheus (the shortest window is two of them)."
    )
    sticky_header: str | None = Field(
        default=None,
        description="Local splitter only: request header whose value keeps a client on one side (unset: random).",
    )
    local_replay_rps: float = Field(
        default=40.0,
        gt=0,
        le=1000,
        description="Local backend only: requests per second replayed through the splitter during a rollout run by "
        "the pipeline (locally nothing else calls the endpoint).",
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the controller's own /metrics while it runs; 0: none."
    )
    min_requests: int = Field(
        default=200,
        ge=1,
        description="Requests each side (canary and stable) must have answered in the window before any verdict "
        "but WAIT; below that the evidence is noise.",
    )
    max_error_rate: float = Field(
        default=0.01, ge=0, le=1, description="Highest canary server error rate (outcome error or unavailable)."
    )
    max_error_rate_increase: float = Field(
        default=0.005,
        ge=0,
        le=1,
        description="Highest canary error rate above the stable one in the same window (rate points).",
    )
    max_p99_latency_seconds: float = Field(
        default=0.1,
        gt=0,
        description="Highest canary p99 latency of the predictor (stage predict: validation, model, post-assertion).",
    )
    max_p99_latency_ratio: float = Field(
        default=1.5, ge=1, description="Highest canary p99 latency as a multiple of the stable p99."
    )
    latency_min_tail_observations: int = Field(
        default=5,
        ge=1,
        description="The canary-vs-stable latency check reads the highest quantile (at most p99) with at least "
        "this many observations above it on each side: over 100 requests p99 is the single slowest one, and one "
        "scheduler hiccup must not roll back a healthy canary. The absolute check always reads p99.",
    )
    p99_latency_tolerance_seconds: float = Field(
        default=0.002,
        ge=0,
        description="A canary p99 within this much of the stable p99 passes the ratio check (bucket resolution "
        "near 1 ms makes ratios of tiny latencies noise).",
    )
    max_score_psi: float = Field(
        default=0.2, ge=0, description="Highest PSI of the canary score histogram against the stable one."
    )
    distribution_test_alpha: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="Chance that sampling noise alone rolls back a healthy canary over a whole rollout: PSI and KS "
        "must also exceed what noise reaches for the requests seen (the chi-square bound of PSI, the two-sample KS "
        "critical value) at this level split evenly over every test a rollout makes (two per analysis, "
        "step_window_seconds / analysis_interval_seconds analyses per analysed step), so neither a few dozen "
        "requests nor many looks roll back a healthy canary.",
    )
    min_expected_per_bin: float = Field(
        default=5.0,
        gt=0,
        description="Adjacent score buckets are pooled until each holds at least this many canary scores expected "
        "under the stable distribution (and as many stable ones), the usual validity rule of chi-square tests: a "
        "bucket seen once in twenty requests must not weigh like a population shift.",
    )
    max_score_ks: float = Field(
        default=0.15, ge=0, le=1, description="Highest KS distance of the canary score histogram from the stable one."
    )
    max_fallback_rate: float = Field(
        default=0.01, ge=0, le=1, description="Highest share of canary scores replaced by the fallback heuristic."
    )
    min_precision: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Lowest canary precision on labelled feedback; unset, or no labels in the window: not checked.",
    )
    min_recall: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Lowest canary recall on labelled feedback; unset, or no labels in the window: not checked.",
    )

    @field_validator("traffic_steps_percent")
    @classmethod
    def _steps_increase_to_100(cls, v: list[int]) -> list[int]:
        if not v or any(not 0 < s <= 100 for s in v) or any(a >= b for a, b in zip(v, v[1:], strict=False)):
            raise ValueError(f"must be strictly increasing percentages in (0, 100], got {v}")
        if v[-1] != 100:
            raise ValueError(f"must end at 100 (the promotion), got {v}")
        return v


#: Rollout settings of the local loop (`mlplatform run`, the local pipeline): windows of seconds instead of
#: minutes, since locally the only traffic is replayed at a few dozen requests per second.
LOCAL_PROFILE: dict[str, Any] = {
    "step_window_seconds": 5,
    "analysis_interval_seconds": 1.0,
    "min_requests": 20,
    "step_max_wait_seconds": 120.0,
    "p99_latency_tolerance_seconds": 0.01,
}


def local_profile() -> CanarySettings:
    """Canary settings of a local run: MLPLATFORM_CANARY_* variables win, then LOCAL_PROFILE, then the defaults.

    Raises:
        ConfigError: A variable or a profile value is invalid (a misspelt field name included).
    """
    from_env = load_settings(CanarySettings).model_fields_set
    return load_settings(CanarySettings, **{k: v for k, v in LOCAL_PROFILE.items() if k not in from_env})
