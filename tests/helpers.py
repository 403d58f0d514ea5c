"""Helpers shared by several test folders (importable as `tests.helpers`; not collected: no test_ prefix)."""

from __future__ import annotations

import base64
import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from mlplatform.settings import PlatformSettings

ROOT = Path(__file__).resolve().parents[1]


def loadgen(url: str, bodies: list[bytes], **job: Any) -> subprocess.CompletedProcess[bytes]:
    """Run the benchmarks' load generator (benchmarks/loadgen; built once per test session if missing or changed)
    with one job: `url`, `bodies` (any bytes) and the other job fields (mode, rate, concurrency, seconds, ...)."""
    spec = {"url": url, "bodies": [base64.b64encode(b).decode() for b in bodies], **job}
    return subprocess.run([_loadgen_binary()], input=json.dumps(spec).encode(), capture_output=True, timeout=120)


@functools.cache
def _loadgen_binary() -> str:
    subprocess.run(["bash", str(ROOT / "scripts" / "tools.sh"), "loadgen"], check=True)
    return str(Path(os.environ.get("MLPLATFORM_TOOLS_DIR", ROOT / ".tools")) / "bin" / "loadgen")


def train_and_register(settings: PlatformSettings, work: Path, max_epochs: int = 3) -> str:
    """The real training-set and train steps on `work`/raw.parquet, then registration of the trained model.

    The first version registered under `settings.registered_model_name` becomes champion.

    Args:
        settings: Platform settings (Feast configuration, MLflow tracking in the work dir).
        work: Folder holding raw.parquet; the splits and the trained artifact are written there.
        max_epochs: Training epochs (the assertions that use this model need a working model, not a good one).

    Returns:
        The registered version.
    """
    import mlflow

    from components.train.step import run_train
    from components.training_set.step import run_training_set
    from mlplatform import registry
    from mlplatform.training.loop import TrainConfig

    splits = {n: work / f"{n}.parquet" for n in ("train", "validation", "test")}
    run_training_set(work / "raw.parquet", settings, 7, 7, splits["train"], splits["validation"], splits["test"])
    outcome = run_train(
        splits["train"], splits["validation"], work / "trained", TrainConfig(max_epochs=max_epochs), settings, [32, 16]
    )
    artifact_uri = mlflow.get_run(outcome.mlflow_run_id).info.artifact_uri
    registered = registry.register_version(
        settings.registered_model_name, f"{artifact_uri}/model", outcome.mlflow_run_id, {}, []
    )
    return str(registered.version)


def evaluate_reference_run(work: Path) -> dict:
    """The pipeline's data and model steps at the pipeline's default parameters (what `make run` trains):
    ingest -> features -> training set -> train -> evaluate, MLflow tracking in `work` (its mlflow.db).

    Returns:
        settings, raw (the raw snapshot's path), report (the evaluation report), run_id (the training run),
        model_dir and card (the model card's text).
    """
    from components.evaluate.step import MODEL_CARD_FILE, run_evaluate
    from components.features.step import run_features
    from components.ingest.step import run_ingest
    from components.train.step import run_train
    from components.training_set.step import run_training_set
    from mlplatform.params import PipelineParams
    from mlplatform.training.loop import TrainConfig

    p = PipelineParams()
    settings = PlatformSettings(work_dir=work)
    raw = work / "raw.parquet"
    run_ingest(raw, n_transactions=p.n_transactions, n_days=p.n_days, seed=p.seed)
    run_features(raw, settings)
    paths = {name: work / f"{name}.parquet" for name in ("train", "validation", "test")}
    run_training_set(
        raw, settings, p.validation_days, p.test_days, paths["train"], paths["validation"], paths["test"],
        warmup_days=p.warmup_days,
    )  # fmt: skip
    config = TrainConfig(max_epochs=p.max_epochs, batch_size=p.batch_size, learning_rate=p.learning_rate, seed=p.seed)
    model_dir = work / "model"
    outcome = run_train(paths["train"], paths["validation"], model_dir, config, settings)
    report = run_evaluate(model_dir, paths["validation"], paths["test"], settings, outcome.mlflow_run_id, work)
    return {
        "settings": settings,
        "raw": raw,
        "report": report,
        "run_id": outcome.mlflow_run_id,
        "model_dir": model_dir,
        "card": (work / MODEL_CARD_FILE).read_text(),
    }
