"""The tuning search on a cluster: a Katib `Experiment` (kubeflow.org/v1beta1) over the same search space."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlplatform.errors import ConfigError
from mlplatform.training.search_space import SEARCH_SPACE, Param, check_params
from mlplatform.training.tuning import OBJECTIVE_METRIC

API_VERSION = "kubeflow.org/v1beta1"
KIND = "Experiment"
#: The trial Job's container; Katib's metrics collector reads its stdout.
TRIAL_CONTAINER = "training"
#: Where the trial Job mounts the shared volume that holds the training set.
DATA_MOUNT_PATH = "/data"
#: Katib's own test for a finished batch Job (GJSON on the Job's status).
JOB_SUCCEEDED = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
JOB_FAILED = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
#: Lines `name=value` on stdout, as `mlplatform train` prints its results (Katib's StdOut collector).
METRICS_FORMAT = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
#: What else the trials report beside the objective.
ADDITIONAL_METRICS = ("best_val_loss",)
#: Katib names trials `<experiment>-<8 characters>` and their Jobs after them: a Job name is a DNS label.
MAX_NAME_LENGTH = 40
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
#: Annotation of the Experiment naming the MLflow run its trials are children of.
PARENT_RUN_ANNOTATION = "mlplatform.io/mlflow-parent-run-id"
#: Trial parameter that Katib fills with the trial's own name (the MLflow child run's name).
TRIAL_NAME_PARAMETER = "trialName"


@dataclass(frozen=True)
class ExperimentOptions:
    """How Katib runs the search.

    Attributes:
        max_trials: Trials to run in all.
        parallel_trials: Trials running at the same time.
        max_failed_trials: Failed trials that fail the Experiment.
        seed: Seed of Katib's TPE suggestion (hyperopt's random_state) and of every trial's training.
        cpu: CPU request of a trial.
        memory: Memory request and limit of a trial.
        gpus: GPUs per trial (0: CPU only).
    """

    max_trials: int = 12
    parallel_trials: int = 3
    max_failed_trials: int = 3
    seed: int = 42
    cpu: str = "2"
    memory: str = "4Gi"
    gpus: int = 0

    def __post_init__(self) -> None:
        if self.max_trials < 1:
            raise ConfigError(f"max_trials must be at least 1, got {self.max_trials}")
        if not 1 <= self.parallel_trials <= self.max_trials:
            raise ConfigError(
                f"parallel_trials must be in [1, max_trials={self.max_trials}], got {self.parallel_trials}"
            )
        if not 0 <= self.max_failed_trials <= self.max_trials:
            raise ConfigError(
                f"max_failed_trials must be in [0, max_trials={self.max_trials}], got {self.max_failed_trials}"
            )
        if self.gpus < 0:
            raise ConfigError(f"gpus must be >= 0, got {self.gpus}")


def katib_parameter(p: Param) -> dict[str, Any]:
    """One parameter of the search space as a Katib ParameterSpec (values are strings in Katib's API)."""
    if p.kind == "categorical":
        return {"name": p.name, "parameterType": "categorical", "feasibleSpace": {"list": [str(c) for c in p.choices]}}
    if p.kind == "int":
        space = {"min": str(int(p.low)), "max": str(int(p.high)), "step": str(p.step)}
        return {"name": p.name, "parameterType": "int", "feasibleSpace": space}
    space = {"min": repr(p.low), "max": repr(p.high), "distribution": "logUniform" if p.log else "uniform"}
    return {"name": p.name, "parameterType": "double", "feasibleSpace": space}


def option_name(p: Param) -> str:
    """The `mlplatform train` option that takes parameter `p`."""
    return "--" + p.name.replace("_", "-")


def render_experiment(
    *,
    name: str,
    namespace: str,
    image: str,
    pvc_name: str,
    data_dir: str,
    parent_run_id: str,
    options: ExperimentOptions,
    settings_config_map: str,
    credentials_secret: str,
    credentials_env: dict[str, str],
    space: Sequence[Param] = SEARCH_SPACE,
) -> dict[str, Any]:
    """The Katib Experiment that searches `space` with TPE, each trial a batch Job running the train step.

    A trial runs `mlplatform train` in the component image on `<data_dir>/train.parquet` and
    `validation.parquet` of the shared volume `pvc_name` (mounted read-only at DATA_MOUNT_PATH), with the
    trial's parameters substituted (`${trialParameters.<name>}`), as an MLflow child run of `parent_run_id`;
    it prints `val_pr_auc=<value>` (the objective, maximised) and `best_val_loss=<value>`, which Katib's
    StdOut collector reads. The settings ConfigMap and the MLflow credentials Secret of the pipeline
    components give it the tracking server, optionally, as they do the pipeline's tasks.

    Args:
        name: The Experiment's name (lower-case DNS label of at most MAX_NAME_LENGTH characters).
        namespace: Its namespace (where the trial Jobs run, beside the shared claim).
        image: The component image.
        pvc_name: The ReadWriteMany claim with the training set.
        data_dir: Folder of the training set, relative to the claim's root.
        parent_run_id: The MLflow run the trials are children of.
        options: Trial counts, seed and resources.
        settings_config_map: ConfigMap of the components' MLPLATFORM_* settings.
        credentials_secret: Secret with the MLflow credentials.
        credentials_env: Its keys -> the environment variables that take them.
        space: The search space (SEARCH_SPACE).

    Raises:
        ConfigError: On a name Katib would refuse or an unsafe data folder.
    """
    if not NAME_PATTERN.match(name) or len(name) > MAX_NAME_LENGTH:
        raise ConfigError(
            f"experiment name {name!r} must be lower-case letters, digits and '-', start with a letter and be at "
            f"most {MAX_NAME_LENGTH} characters (Katib names its trials' Jobs after it)"
        )
    if data_dir.startswith("/") or ".." in data_dir.split("/") or not data_dir.strip("/"):
        raise ConfigError(f"data dir {data_dir!r} must be a folder relative to the claim's root, without '..'")
    data = f"{DATA_MOUNT_PATH}/{data_dir.strip('/')}"
    command = [
        "mlplatform",
        "train",
        *("--train", f"{data}/train.parquet", "--validation", f"{data}/validation.parquet"),
        *("--model-dir", "/tmp/model", "--seed", str(options.seed)),
        *("--parent-run-id", parent_run_id, "--run-name", f"${{trialParameters.{TRIAL_NAME_PARAMETER}}}"),
        *(f"{option_name(p)}=${{trialParameters.{p.name}}}" for p in space),
    ]
    resources: dict[str, Any] = {
        "requests": {"cpu": options.cpu, "memory": options.memory},
        "limits": {"memory": options.memory},
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": TRIAL_CONTAINER,
                "image": image,
                "command": command,
                "envFrom": [{"configMapRef": {"name": settings_config_map, "optional": True}}],
                "env": [
                    {"name": "OMP_NUM_THREADS", "value": options.cpu if options.cpu.isdigit() else "1"},
                    *(
                        {
                            "name": var,
                            "valueFrom": {"secretKeyRef": {"name": credentials_secret, "key": key, "optional": True}},
                        }
                        for key, var in credentials_env.items()
                    ),
                ],
                "resources": resources,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [
                    {"name": "shared", "mountPath": DATA_MOUNT_PATH, "readOnly": True},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
        "volumes": [
            {"name": "shared", "persistentVolumeClaim": {"claimName": pvc_name, "readOnly": True}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if options.gpus:
        resources["requests"]["nvidia.com/gpu"] = options.gpus
        resources["limits"]["nvidia.com/gpu"] = options.gpus
        pod["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    trial_spec = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "backoffLimit": 0,  # a failed trial is Katib's to count, not the Job's to retry
            "template": {"metadata": {"annotations": {"sidecar.istio.io/inject": "false"}}, "spec": pod},
        },
    }
    trial_parameters = [
        {"name": TRIAL_NAME_PARAMETER, "description": "The trial's name", "reference": "${trialSpec.Name}"},
        *({"name": p.name, "description": p.help, "reference": p.name} for p in space),
    ]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "mlplatform", "app.kubernetes.io/component": "tuning"},
            "annotations": {PARENT_RUN_ANNOTATION: parent_run_id},
        },
        "spec": {
            "objective": {
                "type": "maximize",
                "objectiveMetricName": OBJECTIVE_METRIC,
                "additionalMetricNames": list(ADDITIONAL_METRICS),
            },
            "algorithm": {
                "algorithmName": "tpe",
                "algorithmSettings": [{"name": "random_state", "value": str(options.seed)}],
            },
            "parallelTrialCount": options.parallel_trials,
            "maxTrialCount": options.max_trials,
            "maxFailedTrialCount": options.max_failed_trials,
            "metricsCollectorSpec": {
                "collector": {"kind": "StdOut"},
                "source": {"filter": {"metricsFormat": [METRICS_FORMAT]}},
            },
            "parameters": [katib_parameter(p) for p in space],
            "trialTemplate": {
                "primaryContainerName": TRIAL_CONTAINER,
                "successCondition": JOB_SUCCEEDED,
                "failureCondition": JOB_FAILED,
                "trialParameters": trial_parameters,
                "trialSpec": trial_spec,
            },
        },
    }


@dataclass(frozen=True)
class BestTrial:
    """The best trial of a Katib Experiment so far."""

    name: str
    params: dict[str, float | int]
    value: float
    trials: int


def best_trial(experiment: dict[str, Any], space: Sequence[Param] = SEARCH_SPACE) -> BestTrial:
    """The best trial of an Experiment read from the API server (`status.currentOptimalTrial`), typed and checked.

    Raises:
        ConfigError: When the Experiment has no optimal trial yet or its parameters do not fit `space`.
    """
    name = (experiment.get("metadata") or {}).get("name")
    status = experiment.get("status") or {}
    optimal = status.get("currentOptimalTrial") or {}
    assignments = optimal.get("parameterAssignments") or []
    metrics = {m.get("name"): m for m in (optimal.get("observation") or {}).get("metrics") or []}
    if not assignments or OBJECTIVE_METRIC not in metrics:
        raise ConfigError(f"experiment {name!r} has no optimal trial with {OBJECTIVE_METRIC} yet")
    kinds = {p.name: p.kind for p in space}
    values: dict[str, Any] = {}
    for a in assignments:
        raw = str(a.get("value"))
        try:
            values[a.get("name")] = float(raw) if kinds.get(a.get("name")) == "float" else int(float(raw))
        except ValueError:
            raise ConfigError(f"experiment {name!r}: parameter {a.get('name')} = {raw!r} is not a number") from None
    metric = metrics[OBJECTIVE_METRIC]
    try:
        value = float(metric.get("max", metric.get("latest")))
    except (TypeError, ValueError):
        raise ConfigError(f"experiment {name!r}: {OBJECTIVE_METRIC} of the optimal trial is not a number") from None
    trials = int(status.get("trialsSucceeded", 0)) + int(status.get("trialsFailed", 0))
    return BestTrial(str(optimal.get("bestTrialName", "")), check_params(values, space), value, trials)
