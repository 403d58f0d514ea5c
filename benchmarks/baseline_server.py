"""The serving benchmark's baseline: one uvicorn/FastAPI process doing the same work as the full path
(the same Feast online lookup in Redis, the same feature code, the same model call) with none of
KServe's layers and no second process. Started by bench_serving.py; not part of the platform.

Usage: python benchmarks/baseline_server.py MODEL_DIR PORT  (Feast settings from MLPLATFORM_SERVING_*)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import ORJSONResponse

from mlplatform.features.compute import model_input_arrays
from mlplatform.features.online import OnlineReader
from mlplatform.features.store import default_repo_path, open_store
from mlplatform.training.model import load_model
from serving.schema import parse_v1
from serving.settings import ServingSettings
from serving.transformer import FEATURE_REFS, assemble_features


def build_app(model_dir: Path) -> FastAPI:
    settings = ServingSettings()
    torch.set_num_threads(1)
    model, config = load_model(model_dir)
    repo = settings.feast_repo_path or default_repo_path()
    store = open_store(repo, settings.feast_data_dir or repo, settings.feast_config_file)
    store.get_online_features(features=FEATURE_REFS, entity_rows=[{"customer_id": 0, "merchant_id": 0}])
    reader = OnlineReader(store, FEATURE_REFS, lean=settings.lean_online_reads)  # the transformer's lookup
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> ORJSONResponse:
        txs = parse_v1(await request.json(), settings.max_batch_size, settings.max_amount)
        rows = [{"customer_id": t.customer_id, "merchant_id": t.merchant_id} for t in txs]
        online = await reader.read(rows)
        x = model_input_arrays(assemble_features(txs, online))
        with torch.inference_mode():
            scores = torch.sigmoid(model(torch.from_numpy(x))).tolist()
        return ORJSONResponse({"predictions": [{"score": s, "is_fraud": s >= config.threshold} for s in scores]})

    return app


if __name__ == "__main__":
    uvicorn.run(build_app(Path(sys.argv[1])), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
