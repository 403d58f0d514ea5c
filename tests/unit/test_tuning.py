"""Hyperparameter tuning (mlplatform.training.tuning, its search space mlplatform.training.search_space): trials as
MLflow child runs, pruning, determinism, bad input, and the pipeline's use of the best configuration."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from kfp import components, dsl
from typer.testing import CliRunner

from components.train.component import train as train_component
from components.train.step import tuned_config
from mlplatform import registry
from mlplatform.cli import app
from mlplatform.errors import ConfigError
from mlplatform.params import parse_params
from mlplatform.settings import PlatformSettings
from mlplatform.training.loop import TrainConfig
from mlplatform.training.search_space import (
    SEARCH_SPACE,
    Param,
    apply_params,
    check_params,
    default_params,
    hidden_units,
)
from mlplatform.training.tuning import (
    BEST_ARTIFACT,
    TRIAL_STATE_TAG,
    TUNING_RUN_TAG,
    TuneOptions,
    TuneResult,
    TuningError,
    load_best_params,
    tune,
)
from tests.conftest import Prepared

runner = CliRunner()

#: The search space narrowed to what a unit test can afford (short trials); same parameters as SEARCH_SPACE.
SMALL_SPACE = (
    Param("learning_rate", "float", 1e-4, 3e-2, log=True),
    Param("weight_decay", "float", 1e-6, 1e-2, log=True),
    Param("hidden_width", "int", 16, 64, step=16),
    Param("depth", "int", 1, 2),
    Param("batch_size", "categorical", choices=(512, 1024)),
    Param("max_epochs", "int", 2, 4),
)
BASE = TrainConfig(max_epochs=4)
OPTIONS = TuneOptions(
    trials=4, seed=5, startup_trials=2, pruner_startup_trials=1, pruner_warmup_epochs=0, patience=2, device="cpu"
)


def _search(prepared: Prepared, work: Path, options: TuneOptions = OPTIONS) -> tuple[TuneResult, PlatformSettings]:
    settings = PlatformSettings(work_dir=work)
    experiment_id = registry.configure(settings)
    train, validation = prepared.frame("train"), prepared.frame("validation")
    return tune(train, validation, experiment_id, options, base=BASE, space=SMALL_SPACE), settings


@pytest.fixture(scope="module")
def searched(prepared: Prepared, tmp_path_factory: pytest.TempPathFactory) -> tuple[TuneResult, PlatformSettings]:
    """One small search (4 trials), shared by the tests that read its runs."""
    return _search(prepared, tmp_path_factory.mktemp("tuning"))


@pytest.mark.slow
@pytest.mark.mltest("model-3")
def test_a_search_scores_every_trial_and_beats_or_keeps_the_defaults(searched) -> None:
    result, _ = searched
    assert [t.number for t in result.trials] == [0, 1, 2, 3]
    assert result.trials[0].params == default_params(BASE)  # the defaults are the first trial
    assert result.default_value == result.trials[0].value is not None
    complete = [t for t in result.trials if t.state == "complete"]
    assert result.best_value == max(t.value for t in complete)
    assert result.best_value >= result.default_value
    assert 0 < result.best_value <= 1
    assert len({json.dumps(t.params, sort_keys=True) for t in result.trials}) == 4  # four distinct points


@pytest.mark.slow
def test_trials_are_child_runs_of_one_parent_that_records_the_best(searched) -> None:
    result, settings = searched
    client = mlflow.MlflowClient(settings.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags[TUNING_RUN_TAG] == "parent"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'"
    )
    assert sorted(r.info.run_id for r in children) == sorted(t.mlflow_run_id for t in result.trials)
    states = {r.info.run_id: r.data.tags[TRIAL_STATE_TAG] for r in children}
    assert states == {t.mlflow_run_id: t.state for t in result.trials}
    for run in children:
        if run.data.tags[TRIAL_STATE_TAG] == "complete":
            assert run.data.metrics["val_pr_auc"] > 0
            assert run.info.status == "FINISHED"
    # the parent: best parameters as parameters, the best value, and tuning/best.json with the search space
    assert float(parent.data.params["learning_rate"]) == pytest.approx(result.best_params["learning_rate"])
    assert parent.data.metrics["best_val_pr_auc"] == pytest.approx(result.best_value)
    best = json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=result.parent_run_id, artifact_path=BEST_ARTIFACT)).read_text()
    )
    assert best["params"] == result.best_params and best["value"] == pytest.approx(result.best_value)
    assert [p["name"] for p in best["search_space"]] == [p.name for p in SMALL_SPACE]
    assert load_best_params(result.parent_run_id) == result.best_params
    # what the train component does with the pipeline's tuning_run_id
    config, layers = tuned_config(TrainConfig(seed=3), result.parent_run_id, settings)
    assert (config.learning_rate, config.batch_size, config.seed) == (
        result.best_params["learning_rate"],
        result.best_params["batch_size"],
        3,
    )
    assert layers == hidden_units(result.best_params["hidden_width"], result.best_params["depth"])


@pytest.mark.slow
def test_the_train_command_a_katib_trial_runs_prints_its_metrics_and_joins_the_search(
    searched, prepared: Prepared, tmp_path: Path
) -> None:
    import re

    from mlplatform.training.katib import METRICS_FORMAT  # the Katib module only for its collector's format

    result, settings = searched
    args = ["train", "--train", str(prepared.splits["train"]), "--validation", str(prepared.splits["validation"])]
    args += ["--model-dir", str(tmp_path / "model"), "--max-epochs", "2", "--hidden-width", "16", "--depth", "1"]
    args += ["--parent-run-id", result.parent_run_id, "--run-name", "fraud-tuning-abc123"]
    out = runner.invoke(app, [*args, "--work-dir", str(settings.work_dir)])
    assert out.exit_code == 0, out.output
    metrics = {m[0]: float(m[1]) for m in re.findall(METRICS_FORMAT, out.stdout)}
    assert 0 < metrics["val_pr_auc"] <= 1 and metrics["best_val_loss"] > 0
    client = mlflow.MlflowClient(settings.tracking_uri)
    trial = client.search_runs(
        [client.get_run(result.parent_run_id).info.experiment_id],
        filter_string="attributes.run_name = 'fraud-tuning-abc123'",
    )
    assert len(trial) == 1 and trial[0].data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert trial[0].data.metrics["val_pr_auc"] == pytest.approx(metrics["val_pr_auc"], abs=1e-6)
    assert (tmp_path / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_the_median_pruner_stops_trials_behind_the_median(searched) -> None:
    result, settings = searched
    pruned = [t for t in result.trials if t.state == "pruned"]
    assert pruned, [(t.number, t.state, t.epochs) for t in result.trials]
    for t in pruned:
        assert t.epochs < t.params["max_epochs"]  # stopped before its last epoch
        run = mlflow.MlflowClient(settings.tracking_uri).get_run(t.mlflow_run_id)
        assert run.info.status == "KILLED" and "val_pr_auc" not in run.data.metrics


@pytest.mark.slow
def test_the_same_seed_gives_the_same_trials_and_best_configuration(
    searched, prepared: Prepared, tmp_path: Path
) -> None:
    first, _ = searched
    again, _ = _search(prepared, tmp_path)
    assert [(t.params, t.state, t.value, t.epochs) for t in again.trials] == [
        (t.params, t.state, t.value, t.epochs) for t in first.trials
    ]
    assert again.best_params == first.best_params and again.best_value == first.best_value


def test_the_train_steps_defaults_lie_in_the_search_space() -> None:
    assert check_params(default_params()) == default_params()
    assert [p.name for p in SMALL_SPACE] == [p.name for p in SEARCH_SPACE]  # the tests' space only narrows it
    config, layers = apply_params(default_params(), TrainConfig())
    assert config == TrainConfig() and layers == [64, 32]  # the train step's own defaults, unchanged


def test_a_point_of_the_space_becomes_a_training_configuration() -> None:
    params = {
        "learning_rate": 0.01,
        "weight_decay": 1e-3,
        "hidden_width": 96,
        "depth": 3,
        "batch_size": 512,
        "max_epochs": 15,
    }
    config, layers = apply_params(params, TrainConfig(seed=9, pos_weight=2.0))
    assert (config.learning_rate, config.weight_decay, config.batch_size, config.max_epochs) == (0.01, 1e-3, 512, 15)
    assert (config.seed, config.pos_weight) == (9, 2.0)  # what is not searched comes from the base
    assert layers == [96, 48, 24] and hidden_units(16, 3) == [16, 8, 8]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"learning_rate": 0.5}, "learning_rate must be a number in"),
        ({"hidden_width": 40}, "hidden_width must be in .* steps of 16"),
        ({"batch_size": 300}, "batch_size must be one of"),
        ({"depth": "2"}, "depth must be an integer"),
        ({"depth": True}, "depth must be an integer"),
        ({"dropout": 0.2}, "unknown tuning parameter"),
    ],
)
def test_parameters_outside_the_search_space_are_refused_by_name(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_params({**default_params(), **change})


def test_a_missing_parameter_is_named() -> None:
    params = default_params()
    del params["depth"]
    with pytest.raises(ConfigError, match="missing tuning parameter.*depth"):
        check_params(params)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"trials": 0}, "trials must be at least 1"),
        ({"timeout_seconds": 0}, "timeout_seconds must be positive"),
        ({"seed": -1}, "seed must be in"),
        ({"device": "tpu"}, "device must be auto, cpu or cuda"),
        ({"patience": 0}, "patience must be at least 1"),
    ],
)
def test_bad_tuning_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TuneOptions(**options)


@pytest.mark.parametrize(
    ("param", "message"),
    [
        (lambda: Param("x", "float", 1.0, 0.5), "low .* must be below high"),
        (lambda: Param("x", "int", 0, 4, log=True), "log scale needs a float"),
        (lambda: Param("x", "categorical"), "needs choices"),
        (lambda: Param("x", "bool", 0, 1), "kind must be"),  # type: ignore[arg-type]
    ],
)
def test_a_malformed_search_space_is_refused(param, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        param()


def test_a_validation_split_without_fraud_is_refused(prepared: Prepared, mlflow_work_dir: Path) -> None:
    validation = prepared.frame("validation")
    experiment_id = registry.configure(PlatformSettings(work_dir=mlflow_work_dir))
    with pytest.raises(ConfigError, match="validation split needs both fraud and legitimate rows"):
        tune(prepared.frame("train"), validation[validation["is_fraud"] == 0], experiment_id, OPTIONS, BASE)


def test_a_split_without_model_features_is_refused(prepared: Prepared, mlflow_work_dir: Path) -> None:
    experiment_id = registry.configure(PlatformSettings(work_dir=mlflow_work_dir))
    train = prepared.frame("train").drop(columns=["amount_log"])
    with pytest.raises(ConfigError, match="training split lacks the model feature"):
        tune(train, prepared.frame("validation"), experiment_id, OPTIONS, BASE)


def test_a_run_that_is_not_a_tuning_run_is_refused(mlflow_work_dir: Path) -> None:
    experiment_id = registry.configure(PlatformSettings(work_dir=mlflow_work_dir))
    with mlflow.start_run(experiment_id=experiment_id) as run:
        pass
    with pytest.raises(TuningError, match="is not a tuning run"):
        load_best_params(run.info.run_id)
    with pytest.raises(TuningError, match="not found"):
        load_best_params("0" * 32)


def test_the_pipeline_parameter_takes_an_mlflow_run_id_or_nothing() -> None:
    assert parse_params({}).tuning_run_id == ""
    assert parse_params({"tuning_run_id": "a" * 32}).tuning_run_id == "a" * 32
    with pytest.raises(ConfigError, match="tuning_run_id"):
        parse_params({"tuning_run_id": "latest"})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tune"], "name the data"),
        (
            ["tune", "--train", "nowhere.parquet", "--validation", "nowhere.parquet"],
            "--train nowhere.parquet does not exist",
        ),
        (["tune", "--training-set", "no-such-dir"], "--training-set no-such-dir is not a folder"),
        (["tune", "--training-set", ".", "--train", "x.parquet"], "either --training-set or --train"),
        (["tune", "--trials", "0", "--training-set", "."], "trials must be at least 1"),
        (["tune", "--timeout", "-5", "--training-set", "."], "timeout_seconds must be positive"),
        (["tune", "--katib-out", "x.yaml"], "--katib-out needs --katib-data-dir"),
        (["tune", "--katib-result", "no-such.yaml"], "--katib-result no-such.yaml does not exist"),
        (["train", "--training-set", "."], "--train train.parquet does not exist"),
    ],
)
def test_tune_and_train_commands_reject_bad_options_with_a_clear_error(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*args, "--work-dir", str(tmp_path / "work")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "work" / "mlflow.db").exists()  # refused before anything was recorded


def test_tune_rejects_a_file_that_is_not_parquet(tmp_path: Path) -> None:
    bad = tmp_path / "train.parquet"
    bad.write_text("not parquet")
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "validation.parquet")
    result = runner.invoke(app, ["tune", "--training-set", str(tmp_path), "--work-dir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "is not a readable Parquet file" in " ".join(result.output.split())


def test_the_compiled_pipeline_passes_its_tuning_run_id_to_train_and_defaults_to_none(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    compiled = runner.invoke(app, ["pipeline", "compile", "--output", str(out)])
    assert compiled.exit_code == 0, compiled.output
    spec = components.load_component_from_file(str(out)).pipeline_spec
    assert spec.root.input_definitions.parameters["tuning_run_id"].default_value.string_value == ""
    train_inputs = spec.root.dag.tasks["train"].inputs.parameters
    assert train_inputs["tuning_run_id"].component_input_parameter == "tuning_run_id"


@pytest.mark.slow
def test_the_train_component_trains_with_the_best_configuration_of_its_tuning_run(
    searched, prepared: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, settings = searched
    monkeypatch.setenv("MLPLATFORM_WORK_DIR", str(settings.work_dir))
    model, metrics = dsl.Model(uri=str(tmp_path / "model")), dsl.Metrics(uri=str(tmp_path / "metrics"))
    run_id = train_component.python_func(
        train=dsl.Dataset(uri=str(prepared.splits["train"])),
        validation=dsl.Dataset(uri=str(prepared.splits["validation"])),
        max_epochs=2,  # what the pipeline passes; the tuning run's configuration replaces it
        batch_size=4096,
        learning_rate=0.1,
        seed=3,
        run_name="",
        model=model,
        metrics=metrics,
        tuning_run_id=result.parent_run_id,
    )
    run = mlflow.MlflowClient(settings.tracking_uri).get_run(run_id)
    best = result.best_params
    assert run.data.tags["tuning_run_id"] == result.parent_run_id
    assert float(run.data.params["learning_rate"]) == pytest.approx(best["learning_rate"])
    assert int(run.data.params["batch_size"]) == best["batch_size"]
    assert int(run.data.params["max_epochs"]) == best["max_epochs"]
    assert run.data.params["hidden_units"] == str(hidden_units(best["hidden_width"], best["depth"]))
    assert run.data.params["seed"] == "3"  # the pipeline's seed stays
    assert model.metadata["val_pr_auc"] == pytest.approx(run.data.metrics["val_pr_auc"])
