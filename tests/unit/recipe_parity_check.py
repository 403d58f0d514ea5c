"""The end-to-end run of docs/adding-a-feature.md, inside a copy of the project with the recipe applied.

`tests/unit/test_feature_recipe.py` runs it as `python recipe_parity_check.py <copy> <work dir> <feature> <out.json>`;
it writes its findings to `<out.json>` (stdout carries Feast's progress output), and that test asserts on them.
Not a test module (no `test_` prefix): it must import the copy's packages, so it runs in its own process.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

N_EVENTS = 24


def run(root: Path, work: Path, feature: str) -> dict[str, Any]:
    """Features, training set, validation, training and serving of the copy at `root`, in `work`."""
    sys.path.insert(0, str(root))
    import mlplatform  # the copy's, not the checkout's: imported only once `root` leads the path

    if not Path(mlplatform.__file__).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"mlplatform was imported from {mlplatform.__file__}, not from the copy {root}")

    import numpy as np
    import pandas as pd
    from prometheus_client import CollectorRegistry

    from components.features.step import run_features  # the copy's (see above), as every project import here
    from components.ingest.step import run_ingest  # the copy's
    from components.train.step import run_train  # the copy's
    from components.training_set.step import run_training_set  # the copy's
    from components.validate.step import RANGES, run_validate  # the copy's
    from mlplatform.deploy.artifact import ArtifactInvalid, verify_artifact  # the copy's
    from mlplatform.features import store as featurestore  # the copy's
    from mlplatform.features.compute import MODEL_FEATURES, model_input, model_input_arrays  # the copy's
    from mlplatform.settings import PlatformSettings  # the copy's
    from mlplatform.training.loop import TrainConfig  # the copy's
    from mlplatform.training.model import (  # the copy's
        ModelConfig,
        build_model,
        load_model,
        load_reference_stats,
        predict_proba,
        save_model,
    )
    from serving.metrics import ServingMetrics  # the copy's
    from serving.predictor import FraudPredictor  # the copy's
    from serving.settings import ServingSettings  # the copy's
    from serving.transformer import FraudTransformer  # the copy's

    out: dict[str, Any] = {"model_features": list(MODEL_FEATURES), "range": list(RANGES.get(feature, ()))}
    settings = PlatformSettings(work_dir=work, feast_repo_path=root / "feature_repo")
    raw = work / "raw.parquet"
    run_ingest(raw, n_transactions=4_000, n_days=30, seed=11)
    features = run_features(raw, settings)

    # Feast: the view's field and the service's projection, as the registry holds them after `feast apply`.
    store = featurestore.open_store(settings.feast_repo, settings.feast_data, settings.feast_config_file)
    view = store.get_feature_view("customer_stats")
    out["view_dtype"] = next((str(f.dtype) for f in view.features if f.name == feature), None)
    service = store.get_feature_service(featurestore.FEATURE_SERVICE)
    out["service_features"] = [f.name for p in service.feature_view_projections for f in p.features]

    # Training: the point-in-time training set, its validation, the train step (MLflow in the work dir).
    splits = {n: work / f"{n}.parquet" for n in ("train", "validation", "test")}
    run_training_set(raw, settings, 7, 7, splits["train"], splits["validation"], splits["test"])
    train = pd.read_parquet(splits["train"])
    column = pd.to_numeric(train.get(feature, pd.Series(dtype=float)), errors="coerce")
    out["train_column"] = {
        "present": feature in train.columns,
        "rows": len(train),
        "nulls": int(column.isna().sum()),
        "distinct": int(column.nunique()),
        "min": float(column.min()),
        "max": float(column.max()),
    }
    report = run_validate(splits, None)
    out["validation"] = {"checks": report.checks, "violations": report.violations}
    model_dir = work / "model"
    outcome = run_train(
        splits["train"],
        splits["validation"],
        model_dir,
        TrainConfig(max_epochs=2, batch_size=256, device="cpu"),
        settings,
        [16],
    )
    out["train"] = {"epochs": outcome.epochs_run, "final_train_loss": outcome.final_train_loss}
    out["artifact_features"] = verify_artifact(model_dir)["feature_names"]
    out["reference_features"] = sorted((load_reference_stats(model_dir) or {}).get("features", {}))
    old_features = [f for f in MODEL_FEATURES if f != feature]
    old = save_model(build_model(ModelConfig(old_features, [4])), ModelConfig(old_features, [4]), work / "old-model")
    try:
        verify_artifact(old)
        out["old_artifact_refused"] = ""
    except ArtifactInvalid as exc:
        out["old_artifact_refused"] = str(exc)

    # Events after the last materialized row: the online store's latest rows are then what a point-in-time join
    # sees, so both paths must give the same values. Customers and merchants of the last transactions (fresh in
    # both stores) and one unknown customer (defaults on both paths).
    tx = pd.read_parquet(raw).sort_values("event_timestamp")
    recent = list(dict.fromkeys(zip(tx["customer_id"].astype(int), tx["merchant_id"].astype(int), strict=True)))
    pairs = recent[::-1][: N_EVENTS - 1] + [(10**12, int(tx["merchant_id"].iloc[-1]))]
    start = float(int(pd.Timestamp(features.materialized_until).timestamp()) + 60)
    rng = np.random.default_rng(3)
    events = pd.DataFrame(
        {
            "customer_id": [c for c, _ in pairs],
            "merchant_id": [m for _, m in pairs],
            "amount": np.round(rng.lognormal(3.5, 1.2, len(pairs)), 2),
            "event_unix_s": [start + 37.0 * i for i in range(len(pairs))],
        }
    )
    events["event_timestamp"] = pd.to_datetime(events["event_unix_s"], unit="s", utc=True)

    offline = store.get_historical_features(entity_df=events, features=service).to_df()
    offline = events[["customer_id", "event_unix_s"]].merge(offline, on=["customer_id", "event_unix_s"], how="left")
    # The model input as serving keeps it (float64: the prediction log's exact values), and as the model sees it.
    offline_rows = model_input_arrays(
        {f: pd.to_numeric(offline[f], errors="coerce").to_numpy(np.float64) for f in MODEL_FEATURES}, dtype=np.float64
    )
    model, _ = load_model(model_dir)
    offline_scores = predict_proba(model, model_input(offline)).astype(np.float64)

    # Serving: the transformer opens the store as a deployment does (settings), the predictor loads the artifact.
    serving = ServingSettings(feast_repo_path=settings.feast_repo, feast_data_dir=settings.feast_data)
    transformer = FraudTransformer(
        "fraud-detector",
        serving,
        metrics=ServingMetrics("fraud-detector", "1", "stable", "transformer", CollectorRegistry()),
    )
    transformer.load()
    body = {
        "instances": [
            {
                "customer_id": int(r.customer_id),
                "merchant_id": int(r.merchant_id),
                "amount": float(r.amount),
                "timestamp": float(r.event_unix_s),
            }
            for r in events.itertuples()
        ]
    }
    scoring = asyncio.run(transformer.preprocess(body))
    predictor = FraudPredictor(
        "fraud-detector",
        model_dir,
        serving,
        ServingMetrics("fraud-detector", "1", "stable", "predictor", CollectorRegistry()),
    )
    predictor.load()
    online_scores = np.asarray(predictor.predict({"instances": scoring.rows.tolist()})["predictions"], np.float64)

    i = list(MODEL_FEATURES).index(feature) if feature in MODEL_FEATURES else None
    out["parity"] = {
        "events": len(events),
        "flags": scoring.flags,
        "online_feature": None if i is None else scoring.rows[:, i].tolist(),
        "offline_feature": None if i is None else offline_rows[:, i].tolist(),
        "max_row_difference": float(np.abs(scoring.rows - offline_rows).max()),
        "max_model_input_difference": float(np.abs(scoring.rows.astype(np.float32) - model_input(offline)).max()),
        "max_score_difference": float(np.abs(online_scores - offline_scores).max()),
        "scores_distinct": int(len(np.unique(np.round(online_scores, 9)))),
    }
    return out


if __name__ == "__main__":
    findings = run(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
    Path(sys.argv[4]).write_text(json.dumps(findings))
