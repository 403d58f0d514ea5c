"""`mlplatform monitor`: the terminal table, the report files per window, and clear errors on bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from mlplatform.cli import app
from mlplatform.features.compute import MODEL_FEATURES
from mlplatform.monitoring.prediction_log import PredictionLog
from mlplatform.monitoring.stats import reference_stats
from mlplatform.training.model import ModelConfig, build_model, save_model

END = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
runner = CliRunner()


def _matrix(rng: np.random.Generator, n: int, shift: float) -> np.ndarray:
    return rng.lognormal(1.0 + shift, 0.6, size=(n, len(MODEL_FEATURES)))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    config = ModelConfig(feature_names=list(MODEL_FEATURES), threshold=0.5)
    ref = reference_stats(_matrix(rng, 5_000, 0.0), MODEL_FEATURES, rng.beta(1, 8, 5_000))
    return save_model(build_model(config), config, tmp_path_factory.mktemp("model") / "m", ref)


def _records(version: str, n: int, shift: float, end: datetime, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    x, scores = _matrix(rng, n, shift), np.clip(rng.beta(1, 8, n) + 0.3 * shift, 0, 1)
    return [
        {
            "request_id": f"r{seed}-{i}",
            "record_id": f"tx{seed}-{i}",
            "transaction_id": f"tx{seed}-{i}",
            "served_at": (end - timedelta(seconds=1 + i % 3000)).isoformat(),
            "model_name": "fraud-detector",
            "model_version": version,
            "role": "stable",
            "features": dict(zip(MODEL_FEATURES, x[i].tolist(), strict=True)),
            "score": float(scores[i]),
            "is_fraud": bool(scores[i] >= 0.5),
            "flags": [],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two hourly windows: the earlier one like training, the last one drifted."""
    directory = tmp_path_factory.mktemp("predictions")
    log = PredictionLog(directory).start()
    log.append(_records("4", 400, 0.0, END - timedelta(hours=1), seed=1))
    log.append(_records("4", 400, 0.8, END, seed=2))
    log.close()
    return directory


def _invoke(*args: str | Path) -> Any:
    return runner.invoke(app, ["monitor", *map(str, args)])


def _text(result: Any) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_show_prints_drift_and_writes_a_report_per_window(artifact: Path, log_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    result = _invoke(
        "show",
        "--work-dir", tmp_path, "--prediction-log-dir", log_dir, "--model-dir", artifact,
        "--window-end", END.isoformat(), "--window-seconds", 3600, "--windows", 2,
        "--min-window-predictions", 100, "--output", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fraud-detector v4" in result.output and "amount_log" in result.output
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["20260301T110000Z", "20260301T120000Z"]
    for name in folders:
        files = {p.name for p in (out / name).iterdir()}
        assert {
            "report.md",
            "report.json",
            "fraud-detector-v4-psi.png",
            "fraud-detector-v4-distributions.png",
        } <= files
        assert (out / name / "fraud-detector-v4-psi.png").read_bytes()[:4] == b"\x89PNG"
    before, after = (json.loads((out / n / "report.json").read_text())["versions"][0] for n in folders)
    assert max(f["psi"] for f in before["features"]) < 0.25 < min(f["psi"] for f in after["features"])
    md = (out / folders[1] / "report.md").read_text()
    assert "| amount_log |" in md and "drift" in md and "![fraud-detector-v4-psi.png]" in md


def test_plain_monitor_is_show(artifact: Path, log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # show's defaults use ./.mlplatform
    monkeypatch.setenv("MLPLATFORM_MONITOR_PREDICTION_LOG_DIR", str(log_dir))
    monkeypatch.setenv("MLPLATFORM_MONITOR_MODEL_DIR", str(artifact))
    result = _invoke()
    # the log's windows lie in the past: nothing served in the last hour
    assert result.exit_code == 2
    assert "no predictions of model 'fraud-detector' were served in the window" in _text(result)


def test_missing_log_dir_is_a_clear_error(tmp_path: Path) -> None:
    result = _invoke("show", "--work-dir", tmp_path)
    assert result.exit_code == 2
    assert f"prediction log folder {(tmp_path / 'predictions').resolve()} does not exist" in _text(result)


def test_unknown_version_on_the_command_line_is_a_clear_error(artifact: Path, log_dir: Path, tmp_path: Path) -> None:
    result = _invoke(
        "show", "--work-dir", tmp_path, "--prediction-log-dir", log_dir, "--model-dir", artifact,
        "--window-end", END.isoformat(), "--model-version", "99",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "no predictions of model 'fraud-detector' version '99'" in _text(result)


def test_window_end_must_be_a_time(log_dir: Path, tmp_path: Path) -> None:
    result = _invoke("show", "--work-dir", tmp_path, "--prediction-log-dir", log_dir, "--window-end", "yesterday")
    assert result.exit_code == 2
    assert "yesterday" in _text(result)


def test_emit_labels_writes_the_labels_of_served_transactions_known_by_then(tmp_path: Path) -> None:
    from mlplatform.data.generator import GeneratorConfig, generate_transactions
    from mlplatform.data.labels import read_labels

    raw = generate_transactions(GeneratorConfig(n_transactions=1_000, n_days=5, seed=3))
    raw.to_parquet(tmp_path / "raw.parquet")
    served = raw["transaction_id"].iloc[:300].tolist()
    log = PredictionLog(tmp_path / "predictions").start()
    records = _records("1", 300, 0.0, END, 5)
    log.append([{**r, "record_id": t, "transaction_id": t} for r, t in zip(records, served, strict=True)])
    log.close()
    until = raw["label_timestamp"].iloc[:300].median()
    args = ["--transactions", tmp_path / "raw.parquet", "--work-dir", tmp_path]
    first = _invoke("emit-labels", *args, "--until", until.isoformat())
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output)
    assert summary["served"] == 300 and 0 < summary["labels"] < 300
    second = _invoke("emit-labels", *args, "--since", until.isoformat(), "--until", "2026-12-31T00:00:00+00:00")
    assert json.loads(second.output)["labels"] == 300 - summary["labels"]
    labels = read_labels(tmp_path / "labels")
    truth = dict(zip(raw["transaction_id"], raw["is_fraud"], strict=True))
    assert set(labels) == set(served) and all(lab.label == truth[t] for t, lab in labels.items())
    missing = _invoke(
        "emit-labels", "--transactions", tmp_path / "nope.parquet", "--until", "2026-01-01", "--work-dir", tmp_path
    )
    assert missing.exit_code == 2 and "nope.parquet does not exist" in _text(missing)


def test_process_entry_point_takes_no_arguments_and_lists_its_variables(capsys: pytest.CaptureFixture[str]) -> None:
    from mlplatform.monitoring.exporter import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "MLPLATFORM_MONITOR_WINDOW_SECONDS" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["--port", "1"])
    assert done.value.code == 2 and "no arguments" in capsys.readouterr().err
