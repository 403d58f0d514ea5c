"""Model tests: learning, determinism, serialisation without pickle, invariance and directional behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlplatform.features.compute import MODEL_FEATURES, ON_DEMAND_FEATURES, model_input, on_demand_features
from mlplatform.training.evaluation import binary_metrics
from mlplatform.training.loop import TrainConfig, train_model
from mlplatform.training.model import CONFIG_FILE, WEIGHTS_FILE, ModelConfig, load_model, predict_proba, save_model
from tests.conftest import Prepared

FAST = TrainConfig(max_epochs=8, batch_size=512, seed=3)


def _xy(prepared: Prepared, split: str) -> tuple[np.ndarray, np.ndarray]:
    frame = prepared.frame(split)
    return model_input(frame), frame["is_fraud"].to_numpy(np.float32)


@pytest.fixture(scope="module")
def trained(prepared: Prepared):
    x_tr, y_tr = _xy(prepared, "train")
    x_va, y_va = _xy(prepared, "validation")
    return train_model(ModelConfig(feature_names=list(MODEL_FEATURES)), x_tr, y_tr, x_va, y_va, FAST)


def test_loss_decreases_within_a_few_epochs(trained) -> None:
    losses = [h.train_loss for h in trained.history]
    assert losses[2] < losses[0]


def test_same_seed_gives_identical_metrics(prepared: Prepared, trained) -> None:
    x_tr, y_tr = _xy(prepared, "train")
    x_va, y_va = _xy(prepared, "validation")
    again = train_model(ModelConfig(feature_names=list(MODEL_FEATURES)), x_tr, y_tr, x_va, y_va, FAST)
    assert [h.val_loss for h in again.history] == [h.val_loss for h in trained.history]
    x_te, _ = _xy(prepared, "test")
    np.testing.assert_array_equal(predict_proba(again.model, x_te), predict_proba(trained.model, x_te))


def test_model_beats_chance_on_the_test_window(prepared: Prepared, trained) -> None:
    x_te, y_te = _xy(prepared, "test")
    m = binary_metrics(y_te, predict_proba(trained.model, x_te), 0.5)
    assert m["roc_auc"] > 0.85
    assert m["pr_auc"] > 3 * y_te.mean()


def test_save_and_load_give_the_same_scores_without_pickle(tmp_path: Path, prepared: Prepared, trained) -> None:
    config = ModelConfig(feature_names=list(MODEL_FEATURES), threshold=0.3)
    save_model(trained.model, config, tmp_path / "m", {"features": {}})
    assert (tmp_path / "m" / WEIGHTS_FILE).read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle stream
    assert json.loads((tmp_path / "m" / CONFIG_FILE).read_text())["threshold"] == 0.3
    loaded, cfg = load_model(tmp_path / "m")
    x_te, _ = _xy(prepared, "test")
    np.testing.assert_array_equal(predict_proba(loaded, x_te), predict_proba(trained.model, x_te))
    assert cfg.feature_names == list(MODEL_FEATURES)


def test_corrupted_weights_are_refused(tmp_path: Path, trained) -> None:
    save_model(trained.model, ModelConfig(feature_names=list(MODEL_FEATURES)), tmp_path / "m")
    (tmp_path / "m" / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot load weights"):
        load_model(tmp_path / "m")


def test_score_of_a_row_does_not_depend_on_its_batch(prepared: Prepared, trained) -> None:
    x_te, _ = _xy(prepared, "test")
    batch = predict_proba(trained.model, x_te[:64])
    single = np.array([predict_proba(trained.model, x_te[i : i + 1])[0] for i in range(64)])
    np.testing.assert_allclose(batch, single, rtol=1e-5, atol=1e-6)
    reversed_scores = predict_proba(trained.model, x_te[:64][::-1])[::-1]
    np.testing.assert_allclose(batch, reversed_scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("feature", "delta"),
    [("merchant_fraud_rate_30d", 0.4), ("is_night", 1.0)],
)
def test_risk_signals_raise_the_score_on_average(prepared: Prepared, trained, feature: str, delta: float) -> None:
    x_te, _ = _xy(prepared, "test")
    i = MODEL_FEATURES.index(feature)
    legit = x_te[prepared.frame("test")["is_fraud"].to_numpy() == 0][:2000].copy()
    if feature == "is_night":
        legit[:, i] = 0.0
    riskier = legit.copy()
    riskier[:, i] = riskier[:, i] + delta
    assert predict_proba(trained.model, riskier).mean() > predict_proba(trained.model, legit).mean()


def test_amount_far_above_the_customers_usual_raises_the_score(prepared: Prepared, trained) -> None:
    frame = prepared.frame("test")
    legit = frame[frame["is_fraud"] == 0].head(2000)
    bigger = legit.assign(amount=legit["amount"] * 8)
    bigger[list(ON_DEMAND_FEATURES)] = on_demand_features(bigger)
    assert (
        predict_proba(trained.model, model_input(bigger)).mean()
        > 2 * predict_proba(trained.model, model_input(legit)).mean()
    )


def test_training_rejects_mismatched_inputs() -> None:
    cfg = ModelConfig(feature_names=["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        train_model(cfg, np.zeros((10, 3), np.float32), np.zeros(10), np.zeros((5, 2)), np.zeros(5), FAST)
    with pytest.raises(ValueError, match="max_epochs"):
        TrainConfig(max_epochs=0)
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="tpu")
