"""Pipeline parameters, the compiled pipeline (loaded with kfp's own loader) and CLI bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from kfp import components
from typer.testing import CliRunner

from mlplatform.cli import app
from mlplatform.errors import ConfigError
from mlplatform.params import DEFAULTS, parse_params

runner = CliRunner()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compiled") / "training_pipeline.yaml"
    result = runner.invoke(app, ["pipeline", "compile", "--output", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_compiled_pipeline_loads_with_kfp_and_keeps_the_parameters(compiled: Path) -> None:
    pipeline = components.load_component_from_file(str(compiled))
    spec = pipeline.pipeline_spec
    assert spec.pipeline_info.name == "fraud-training"
    params = spec.root.input_definitions.parameters
    assert params["n_transactions"].default_value.number_value == DEFAULTS.n_transactions
    tasks = set(spec.root.dag.tasks)
    assert tasks == {
        "ingest",
        "features",
        "training-set",
        "validate-data",
        "train",
        "evaluate",
        "register",
        "deploy-canary",
    }


def test_train_task_is_set_up_for_gpu_nodes(compiled: Path) -> None:
    pipeline = components.load_component_from_file(str(compiled))
    spec = pipeline.pipeline_spec
    executor_label = spec.root.dag.tasks["train"].component_ref.name.replace("comp-", "exec-")
    resources = spec.deployment_spec["executors"][executor_label]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    assert resources["cpuRequest"] == 4 and resources["memoryRequest"] > 0
    k8s = pipeline.platform_spec.platforms["kubernetes"].deployment_spec.executors[executor_label]
    assert dict(k8s["nodeSelector"]["labels"]) == {"nvidia.com/gpu.present": "true"}
    assert k8s["tolerations"][0]["key"] == "nvidia.com/gpu" and k8s["tolerations"][0]["effect"] == "NoSchedule"
    image = spec.deployment_spec["executors"][executor_label]["container"]["image"]
    assert image.startswith("ghcr.io/mlplatform/mlplatform-components:")


def test_parameters_are_validated_with_clear_messages() -> None:
    assert parse_params({}) == DEFAULTS
    with pytest.raises(ConfigError, match=r"n_transactions: .*greater than or equal to 1000.*got 5"):
        parse_params({"n_transactions": 5})
    with pytest.raises(ConfigError, match="fraud_rate"):
        parse_params({"fraud_rate": 0.9})
    with pytest.raises(ConfigError, match="unknown_param"):
        parse_params({"unknown_param": 1})
    with pytest.raises(ConfigError, match="validation_days \\+ test_days"):
        parse_params({"n_days": 15, "validation_days": 10, "test_days": 10})
    with pytest.raises(ConfigError, match="warmup_days \\+ validation_days \\+ test_days \\(30 \\+ 10 \\+ 10\\)"):
        parse_params({"n_days": 50})
    assert parse_params({"n_days": 50, "warmup_days": 0}).warmup_days == 0


def test_the_default_warm_up_is_the_aggregate_window() -> None:
    from mlplatform.features.compute import MERCHANT_WINDOW_DAYS

    assert DEFAULTS.warmup_days == MERCHANT_WINDOW_DAYS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--n-transactions", "5"], "n_transactions"),
        (["run", "--drift", "3"], "drift"),
        (["run", "--learning-rate", "-1"], "learning_rate"),
        (["run", "--n-days", "10"], "must be shorter than n_days"),
    ],
)
def test_run_rejects_bad_options_before_doing_anything(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, [*args, "--work-dir", str(tmp_path / "wd")])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "wd").exists()


def test_run_rejects_non_numeric_option() -> None:
    result = runner.invoke(app, ["run", "--seed", "abc"])
    assert result.exit_code == 2
    assert "--seed" in result.output
