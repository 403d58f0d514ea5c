"""The predictor: a `kserve.Model` that scores model-input rows with one model version's artifact.

The artifact is a local folder (on a cluster KServe's storage initializer puts it in /mnt/models):
weights (safetensors), model_config.json (feature order, threshold) and reference statistics. No
registry call happens on the request path. Speaks KServe v1 (`{"instances": [[...13 floats], ...]}`)
and the Open Inference Protocol v2 (input `features`, FP32, shape [n, len(MODEL_FEATURES)]).

Post-assertion: a non-finite or out-of-range score is replaced by `fallback_score` of that row,
flagged in the response and counted in `mlplatform_prediction_fallbacks_total`.
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model, model_server
from kserve.errors import InvalidInput

from mlplatform.processes import init_process
from mlplatform.training.model import ModelConfig, load_model
from serving.app import serve
from serving.errors import InvalidRequest
from serving.metrics import ServingMetrics
from serving.settings import ServingSettings
from serving.tensor_hop import TensorServer

INPUT_NAME = "features"
OUTPUT_SCORE = "score"
OUTPUT_FALLBACK = "fallback"


def fallback_score(rows: np.ndarray, feature_names: list[str]) -> np.ndarray:
    """The heuristic used when the model's output cannot be trusted: the merchant's fraud rate,
    raised for amounts far above the customer's usual (z-score > 3). Always finite, in [0, 1]."""
    idx = {n: i for i, n in enumerate(feature_names)}
    rate = np.nan_to_num(rows[:, idx["merchant_fraud_rate_30d"]], nan=0.0, posinf=1.0, neginf=0.0)
    z = np.nan_to_num(rows[:, idx["amount_zscore_30d"]], nan=0.0, posinf=50.0, neginf=-50.0)
    return np.clip(rate + 0.25 * (z > 3.0), 0.0, 1.0).astype(np.float64)


class FraudPredictor(Model):
    """Scores rows of model features (in `model_config.json` order) with the fraud MLP.

    Args:
        name: Model name on the endpoint path.
        model_dir: Folder of the model artifact.
        settings: Serving settings (version, role).
        metrics: Where to count; defaults to the process's registry.
    """

    def __init__(
        self, name: str, model_dir: Path, settings: ServingSettings, metrics: ServingMetrics | None = None
    ) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.settings = settings
        self.metrics = metrics or ServingMetrics(name, settings.model_version, settings.role, "predictor")
        self.config: ModelConfig | None = None
        self._model: torch.nn.Module | None = None

    def load(self) -> bool:
        """Load weights and config from the artifact folder (raises if it is incomplete or corrupt)."""
        torch.set_num_threads(1)  # one request's batch is small; threads only add contention on the node
        self._model, self.config = load_model(self.model_dir)
        self.metrics.info(str(self.config.metadata.get("mlflow_run_id", "unknown")))
        self.ready = True
        return self.ready

    @property
    def feature_names(self) -> list[str]:
        assert self.config is not None, "model not loaded"
        return list(self.config.feature_names)

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, len(self.feature_names)]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [
            {"name": OUTPUT_SCORE, "datatype": "FP32", "shape": [-1]},
            {"name": OUTPUT_FALLBACK, "datatype": "BOOL", "shape": [-1]},
        ]

    def _rows(self, payload: dict[str, Any] | InferRequest) -> np.ndarray:
        n_features = len(self.feature_names)
        if isinstance(payload, InferRequest):
            inputs = {i.name: i for i in payload.inputs}
            if INPUT_NAME not in inputs:
                raise InvalidRequest("inputs", f"needs an input named {INPUT_NAME!r}")
            try:
                rows = np.asarray(inputs[INPUT_NAME].as_numpy(), dtype=np.float32)
            except (ValueError, TypeError, OverflowError) as exc:  # OverflowError: a value outside its datatype
                raise InvalidRequest(f"inputs.{INPUT_NAME}", f"is not numeric: {exc}") from None
            rows = rows.reshape(-1, n_features) if rows.ndim == 1 and rows.size % n_features == 0 else rows
        else:
            instances = payload.get("instances") if isinstance(payload, dict) else None
            if not isinstance(instances, list):
                raise InvalidRequest("instances", "is required and must be a list of feature rows")
            try:
                rows = np.asarray(instances, dtype=np.float32)
            except (ValueError, TypeError):
                raise InvalidRequest("instances", f"must be rows of {n_features} numbers") from None
        return rows

    def check_rows(self, rows: np.ndarray) -> np.ndarray:
        """`rows` if the model can score them (shape, size, finite values), else InvalidRequest naming what is wrong."""
        n_features = len(self.feature_names)
        if rows.ndim != 2 or rows.shape[1] != n_features:
            raise InvalidRequest("instances", f"must have shape [n, {n_features}], got {list(rows.shape)}")
        if rows.shape[0] == 0:
            raise InvalidRequest("instances", "must not be empty")
        if rows.shape[0] > self.settings.max_batch_size:
            raise InvalidRequest("instances", f"at most {self.settings.max_batch_size} rows per request")
        if not np.isfinite(rows).all():
            raise InvalidRequest("instances", "must be finite numbers (no NaN or Inf)")
        return rows

    def score(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and fallback flags for validated rows (post-assertion applied)."""
        assert self._model is not None, "model not loaded"
        with torch.inference_mode():
            raw = torch.sigmoid(self._model(torch.from_numpy(rows))).double().numpy()
        bad = ~np.isfinite(raw) | (raw < 0.0) | (raw > 1.0)
        if bad.any():
            non_finite = int((~np.isfinite(raw)).sum())
            if non_finite:
                self.metrics.fallback("non_finite", non_finite)
            if int(bad.sum()) - non_finite:
                self.metrics.fallback("out_of_range", int(bad.sum()) - non_finite)
            raw = np.where(bad, fallback_score(rows, self.feature_names), raw)
        return raw, bad

    def score_request(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One request's rows checked (`check_rows`) and scored (`score`), counted in the metrics: the v1 and v2
        routes and the collocated transformer's tensor hop (serving/tensor_hop.py) all answer through it."""
        start = time.perf_counter()
        try:
            rows = self.check_rows(rows)
        except InvalidInput:
            self.metrics.request("invalid")
            raise
        try:
            scores, fallback = self.score(rows)
        except Exception:
            self.metrics.request("error")
            raise
        self.metrics.scores(scores.tolist())
        self.metrics.stage("predict", time.perf_counter() - start)
        self.metrics.request("ok")
        return scores, fallback

    def predict(
        self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None
    ) -> dict[str, Any] | InferResponse:
        try:
            rows = self._rows(payload)
        except InvalidInput:
            self.metrics.request("invalid")
            raise
        scores, fallback = self.score_request(rows)
        if isinstance(payload, InferRequest):
            return InferResponse(
                model_name=self.name,
                model_version=self.settings.model_version,
                infer_outputs=[
                    InferOutput(OUTPUT_SCORE, [len(scores)], "FP32", scores.astype(np.float32).tolist()),
                    InferOutput(OUTPUT_FALLBACK, [len(scores)], "BOOL", fallback.tolist()),
                ],
                response_id=payload.id or uuid.uuid4().hex,
            )
        return {
            "predictions": scores.tolist(),
            "fallback": fallback.tolist(),
            "model_name": self.name,
            "model_version": self.settings.model_version,
            "role": self.settings.role,
            "threshold": self.config.threshold if self.config else None,
        }


def build_parser() -> argparse.ArgumentParser:
    """KServe's model server flags plus the predictor's own."""
    parser = argparse.ArgumentParser(parents=[model_server.parser], description=__doc__)
    parser.add_argument("--model_dir", required=True, type=Path, help="Folder of the model artifact.")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point: `python -m serving.predictor --model_name fraud-detector --model_dir /mnt/models`."""
    init_process()

    args = build_parser().parse_args(argv)
    settings = ServingSettings()
    run(FraudPredictor(args.model_name, args.model_dir, settings), args, settings)


def run(model: FraudPredictor, args: argparse.Namespace, settings: ServingSettings) -> None:
    """Load `model` and serve it: KServe's routes and, where the settings name a socket, the collocated
    transformer's tensor hop (serving/tensor_hop.py)."""
    model.load()
    hop = None
    if settings.predictor_socket is not None:
        hello = {
            "model_version": settings.model_version,
            "role": settings.role,
            "threshold": model.config.threshold if model.config else None,
            "n_features": len(model.feature_names),
        }
        hop = TensorServer(settings.predictor_socket, model.score_request, hello, settings.max_batch_size)
    serve(model, args, settings, tensor_hop=hop)


if __name__ == "__main__":
    main()
