"""A deliberately broken predictor for rollout drills: what a bad model version does, on demand.

Rollback is only as good as the last time it was exercised. The local rollout tests
(tests/e2e/test_rollout_local.py, through `LocalBackend`'s `canary_predictor_module`) canary a version
served by this predictor instead of `serving.predictor`, with one fault switched on by MLPLATFORM_FAULT_*
variables, and check that the rollout detects it and restores the stable version. Never part of a real
deployment: the InferenceService runs `serving.predictor`; this module is started only by name, locally.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlplatform.processes import init_process
from serving.metrics import ServingMetrics
from serving.predictor import FraudPredictor, build_parser, run
from serving.settings import ServingSettings

FaultKind = Literal["none", "errors", "shift", "slow"]


class FaultSettings(BaseSettings):
    """The fault of one drill; each field from `MLPLATFORM_FAULT_<FIELD NAME>`."""

    model_config = SettingsConfigDict(env_prefix="MLPLATFORM_FAULT_", extra="forbid")

    kind: FaultKind = Field(
        default="none",
        description="errors: a share of requests fail with a server error; shift: scores moved up; slow: every "
        "prediction delayed; none: a healthy predictor.",
    )
    error_rate: float = Field(default=0.2, ge=0, le=1, description="Share of failing requests (kind errors).")
    score_shift: float = Field(default=0.4, ge=-1, le=1, description="Added to every score, clipped (kind shift).")
    delay_seconds: float = Field(
        default=0.025,
        ge=0,
        description="Added to every prediction (kind slow); 25 ms makes the ~6 ms local path five times slower.",
    )


class FaultyPredictor(FraudPredictor):
    """`FraudPredictor` with one fault injected into scoring."""

    def __init__(
        self,
        name: str,
        model_dir: Path,
        settings: ServingSettings,
        metrics: ServingMetrics | None = None,
        faults: FaultSettings | None = None,
    ) -> None:
        super().__init__(name, model_dir, settings, metrics)
        self.faults = faults or FaultSettings()
        self._calls = 0

    def score(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = self.faults
        self._calls += 1
        # evenly spread and deterministic: with error_rate 0.2 every fifth prediction fails
        if f.kind == "errors" and int(self._calls * f.error_rate) != int((self._calls - 1) * f.error_rate):
            raise RuntimeError("injected fault: this prediction fails")
        scores, fallback = super().score(rows)
        if f.kind == "shift":
            scores = np.clip(scores + f.score_shift, 0.0, 1.0)
        elif f.kind == "slow":
            time.sleep(f.delay_seconds)
        return scores, fallback


def main(argv: list[str] | None = None) -> None:
    """Entry point: the predictor's flags, plus MLPLATFORM_FAULT_* variables."""
    init_process()

    args = build_parser().parse_args(argv)
    settings = ServingSettings()
    run(FaultyPredictor(args.model_name, args.model_dir, settings), args, settings)


if __name__ == "__main__":
    main()
