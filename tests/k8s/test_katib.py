"""The tuning search's Katib Experiment: kubeconform against the upstream Katib CRDs, field by field against Katib's
generated API models (the CRDs carry no schema), the rules of Katib's validating webhook, and a trial Job that is a
valid batch/v1 Job running the train step's command line with every parameter of the one search space."""

from __future__ import annotations

import copy
import re
import typing
from pathlib import Path
from typing import Any

import mlflow
import pydantic
import pytest
import typer
import yaml
from kubeflow_katib_api.models import V1beta1Experiment
from typer.testing import CliRunner

from mlplatform.cli import app
from mlplatform.errors import ConfigError
from mlplatform.settings import PlatformSettings
from mlplatform.training import katib
from mlplatform.training.search_space import SEARCH_SPACE, default_params
from mlplatform.training.tuning import OBJECTIVE_METRIC, TUNING_RUN_TAG
from tests.k8s import kube

pytestmark = pytest.mark.k8s

runner = CliRunner()

PARENT = "0123456789abcdef0123456789abcdef"
PLACEHOLDER = re.compile(r"\$\{trialParameters\.([^}]+)\}")


def rendered(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "name": "fraud-tuning",
        "namespace": "mlplatform",
        "image": "ghcr.io/mlplatform/mlplatform-components:0.1.0",
        "pvc_name": "mlplatform-training-shared",
        "data_dir": "runs/fraud-training-abc12/training-set",
        "parent_run_id": PARENT,
        "options": katib.ExperimentOptions(max_trials=12, parallel_trials=3, seed=7),
        "settings_config_map": "mlplatform-pipeline-settings",
        "credentials_secret": "mlplatform-mlflow-pipeline-runner",
        "credentials_env": {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"},
    }
    return katib.render_experiment(**{**args, **overrides})


def trial_job(experiment: dict[str, Any], values: dict[str, Any], trial_name: str = "fraud-tuning-x7k2p9qz") -> dict:
    """The Job Katib makes of the trial template for one assignment (its `${trialParameters.x}` substituted)."""
    refs = {p["name"]: p["reference"] for p in experiment["spec"]["trialTemplate"]["trialParameters"]}
    assignment = {name: trial_name if ref == "${trialSpec.Name}" else str(values[ref]) for name, ref in refs.items()}
    text = yaml.safe_dump(experiment["spec"]["trialTemplate"]["trialSpec"])
    job = yaml.safe_load(PLACEHOLDER.sub(lambda m: assignment[m[1]], text))
    job["metadata"] = {"name": trial_name, "namespace": experiment["metadata"]["namespace"]}
    return job


def _model_of(annotation: Any) -> type[pydantic.BaseModel] | None:
    """The API model class inside Optional[...] / List[...] annotations, if any."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := _model_of(arg)) is not None:
            return found
    return None


def unknown_fields(obj: Any, model: type[pydantic.BaseModel], path: str = "") -> list[str]:
    """Keys of `obj` that `model` (a Katib API model, generated from Katib's Go types) does not declare, recursively.
    Free-form fields (`trialSpec`, labels) are not entered."""
    if not isinstance(obj, dict):
        return []
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    problems = []
    for key, value in obj.items():
        if key not in fields:
            problems.append(f"{path}.{key}")
            continue
        inner = _model_of(fields[key].annotation)
        if inner is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            problems += unknown_fields(item, inner, f"{path}.{key}")
    return problems


def webhook_problems(exp: dict[str, Any]) -> list[str]:
    """The checks of Katib's experiment validating webhook (pkg/webhook/v1beta1/experiment/validator) that apply to
    a parameter search with a trial template, restated."""
    spec, problems = exp["spec"], []
    name = exp["metadata"]["name"]
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        problems.append("metadata.name")
    if not 0 < spec["parallelTrialCount"] <= spec["maxTrialCount"]:
        problems.append("parallelTrialCount")
    if not 0 <= spec["maxFailedTrialCount"] <= spec["maxTrialCount"]:
        problems.append("maxFailedTrialCount")
    objective = spec["objective"]
    if objective["type"] not in ("minimize", "maximize") or not objective["objectiveMetricName"]:
        problems.append("objective")
    if objective["objectiveMetricName"] in objective.get("additionalMetricNames", []):
        problems.append("objective.additionalMetricNames")
    if not spec["algorithm"].get("algorithmName"):
        problems.append("algorithm")
    names = set()
    for p in spec["parameters"]:
        names.add(p["name"])
        space = p["feasibleSpace"]
        if p["parameterType"] not in ("int", "double", "categorical", "discrete"):
            problems.append(f"parameters.{p['name']}.parameterType")
        if space.get("distribution", "uniform") not in ("uniform", "logUniform", "normal", "logNormal"):
            problems.append(f"parameters.{p['name']}.distribution")
        if p["parameterType"] in ("int", "double") and ("list" in space or not ({"min", "max"} & set(space))):
            problems.append(f"parameters.{p['name']}.feasibleSpace")
        if p["parameterType"] in ("categorical", "discrete") and ({"min", "max", "step"} & set(space)):
            problems.append(f"parameters.{p['name']}.feasibleSpace")
    template = spec["trialTemplate"]
    for key in ("primaryContainerName", "successCondition", "failureCondition", "trialParameters", "trialSpec"):
        if not template.get(key):
            problems.append(f"trialTemplate.{key}")
    declared = {}
    for tp in template["trialParameters"]:
        if not tp.get("name") or not tp.get("reference") or re.search(r"[{}]", tp["name"]):
            problems.append(f"trialParameters.{tp.get('name')}")
        if tp["name"] in declared or (tp["reference"] in declared.values()):
            problems.append(f"trialParameters.{tp['name']} duplicated")
        declared[tp["name"]] = tp["reference"]
        if not tp["reference"].startswith("${trialSpec.") and tp["reference"] not in names:
            problems.append(f"trialParameters.{tp['name']}.reference")
    used = set(PLACEHOLDER.findall(yaml.safe_dump(template["trialSpec"])))
    if used != set(declared):
        problems.append(f"trialSpec placeholders {sorted(used ^ set(declared))}")
    containers = template["trialSpec"]["spec"]["template"]["spec"]["containers"]
    if template["primaryContainerName"] not in {c["name"] for c in containers}:
        problems.append("primaryContainerName not in the trial's containers")
    return problems


def test_rendered_experiment_is_valid_for_the_upstream_katib_crds() -> None:
    report = kube.kubeconform(yaml.safe_dump(rendered()))
    assert report["summary"]["valid"] == 1 and report["summary"]["skipped"] == 0


def test_rendered_experiment_declares_only_fields_of_katibs_api_types() -> None:
    exp = rendered()
    assert unknown_fields(exp, V1beta1Experiment) == []
    V1beta1Experiment.from_dict(exp)  # types: strict ints and strings where Katib's Go types have them


@pytest.mark.parametrize(
    ("corrupt", "where"),
    [
        (lambda o: o["spec"].__setitem__("maxTrials", 5), ".spec.maxTrials"),
        (
            lambda o: o["spec"]["trialTemplate"].__setitem__("primaryContainer", "x"),
            ".spec.trialTemplate.primaryContainer",
        ),
        (lambda o: o["spec"]["parameters"][0]["feasibleSpace"].__setitem__("minimum", "1"), "feasibleSpace.minimum"),
    ],
    ids=["misspelt-count", "misspelt-container", "misspelt-bound"],
)
def test_the_field_check_catches_a_misspelt_field(corrupt, where: str) -> None:
    exp = copy.deepcopy(rendered())
    corrupt(exp)
    assert any(p.endswith(where) for p in unknown_fields(exp, V1beta1Experiment))


def test_the_type_check_catches_a_count_given_as_a_string() -> None:
    exp = copy.deepcopy(rendered())
    exp["spec"]["maxTrialCount"] = "12"
    with pytest.raises(pydantic.ValidationError, match="maxTrialCount"):
        V1beta1Experiment.from_dict(exp)


def test_rendered_experiment_passes_katibs_webhook_rules() -> None:
    assert webhook_problems(rendered()) == []
    broken = copy.deepcopy(rendered())
    broken["spec"]["trialTemplate"]["trialParameters"].pop()  # a placeholder left without its parameter
    assert webhook_problems(broken) == ["trialSpec placeholders ['max_epochs']"]


def test_the_experiment_searches_the_one_search_space_with_seeded_tpe_for_validation_pr_auc() -> None:
    spec = rendered()["spec"]
    assert spec["objective"]["type"] == "maximize" and spec["objective"]["objectiveMetricName"] == OBJECTIVE_METRIC
    assert spec["algorithm"] == {"algorithmName": "tpe", "algorithmSettings": [{"name": "random_state", "value": "7"}]}
    assert (spec["maxTrialCount"], spec["parallelTrialCount"], spec["maxFailedTrialCount"]) == (12, 3, 3)
    assert spec["metricsCollectorSpec"]["collector"] == {"kind": "StdOut"}
    by_name = {p["name"]: p for p in spec["parameters"]}
    assert list(by_name) == [p.name for p in SEARCH_SPACE]
    for p in SEARCH_SPACE:
        feasible = by_name[p.name]["feasibleSpace"]
        if p.kind == "categorical":
            assert feasible["list"] == [str(c) for c in p.choices]
        else:
            assert (float(feasible["min"]), float(feasible["max"])) == (p.low, p.high)
        if p.kind == "float":
            assert feasible["distribution"] == ("logUniform" if p.log else "uniform")


def test_a_trial_runs_the_train_step_with_its_parameters_as_a_child_of_the_search() -> None:
    exp = rendered()
    job = trial_job(exp, default_params())
    container = job["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:2] == ["mlplatform", "train"]
    # the train command accepts exactly this command line (parsed by the CLI itself, nothing run)
    ctx = typer.main.get_command(app).make_context("mlplatform", command[1:], resilient_parsing=False)
    sub = ctx.command.get_command(ctx, "train")
    parsed = sub.make_context("train", command[2:]).params
    for name, value in default_params().items():
        assert parsed[name] == value
    assert parsed["parent_run_id"] == PARENT and parsed["run_name"] == "fraud-tuning-x7k2p9qz" and parsed["seed"] == 7
    assert str(parsed["train"]) == "/data/runs/fraud-training-abc12/training-set/train.parquet"
    # runs like the pipeline's tasks: settings and MLflow credentials optional, non-root, read-only root
    assert container["envFrom"] == [{"configMapRef": {"name": "mlplatform-pipeline-settings", "optional": True}}]
    assert {e["name"] for e in container["env"]} >= {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_a_trial_job_is_a_valid_batch_job() -> None:
    report = kube.kubeconform(yaml.safe_dump(trial_job(rendered(), default_params())))
    assert report["summary"]["valid"] == 1


def test_a_gpu_trial_asks_for_a_gpu_node() -> None:
    pod = rendered(options=katib.ExperimentOptions(gpus=1))["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "Fraud_Tuning"}, "experiment name 'Fraud_Tuning' must be"),
        ({"name": "f" * 41}, "at most 40 characters"),
        ({"data_dir": "/etc"}, "must be a folder relative to the claim's root"),
        ({"data_dir": "runs/../../etc"}, "without '..'"),
    ],
)
def test_bad_experiment_inputs_are_refused_by_name(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        rendered(**overrides)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_trials": 0}, "max_trials must be at least 1"),
        ({"max_trials": 4, "parallel_trials": 5}, "parallel_trials must be in [1, max_trials=4]"),
        ({"max_trials": 4, "max_failed_trials": 5}, "max_failed_trials must be in [0, max_trials=4]"),
        ({"gpus": -1}, "gpus must be >= 0"),
    ],
)
def test_bad_experiment_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        katib.ExperimentOptions(**options)


def test_the_best_trial_is_read_from_the_experiments_status() -> None:
    exp = rendered()
    best = default_params() | {"learning_rate": 0.004, "hidden_width": 96}
    exp["status"] = {
        "trialsSucceeded": 11,
        "trialsFailed": 1,
        "currentOptimalTrial": {
            "bestTrialName": "fraud-tuning-x7k2p9qz",
            "parameterAssignments": [{"name": k, "value": str(v)} for k, v in best.items()],
            "observation": {"metrics": [{"name": OBJECTIVE_METRIC, "min": "0.7", "max": "0.8123", "latest": "0.8123"}]},
        },
    }
    found = katib.best_trial(exp)
    assert (found.name, found.params, found.value, found.trials) == ("fraud-tuning-x7k2p9qz", best, 0.8123, 12)
    exp["status"]["currentOptimalTrial"]["parameterAssignments"][0]["value"] = "0.9"  # outside the space
    with pytest.raises(ConfigError, match="learning_rate must be a number in"):
        katib.best_trial(exp)
    with pytest.raises(ConfigError, match="has no optimal trial"):
        katib.best_trial(rendered())


def test_tune_katib_out_writes_the_experiment_and_opens_its_mlflow_parent_run(tmp_path: Path) -> None:
    out, work = tmp_path / "experiment.yaml", tmp_path / "work"
    args = ["tune", "--katib-out", str(out), "--katib-data-dir", "runs/r1/training-set", "--trials", "8"]
    result = runner.invoke(app, [*args, "--katib-parallel", "2", "--seed", "5", "--work-dir", str(work)])
    assert result.exit_code == 0, result.output
    body = yaml.safe_load(out.read_text())
    assert webhook_problems(body) == [] and unknown_fields(body, V1beta1Experiment) == []
    assert (body["spec"]["maxTrialCount"], body["spec"]["parallelTrialCount"]) == (8, 2)
    parent = body["metadata"]["annotations"][katib.PARENT_RUN_ANNOTATION]
    run = mlflow.MlflowClient(PlatformSettings(work_dir=work).tracking_uri).get_run(parent)
    assert run.data.tags[TUNING_RUN_TAG] == "cluster"  # usable by a pipeline run only once its best is recorded
    assert run.data.params["tuning.seed"] == "5"
