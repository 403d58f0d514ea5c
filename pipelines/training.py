"""The training pipeline: ingest -> features -> training set -> validate -> train -> evaluate -> register ->
deploy-canary + analyse (promoted or rolled back)."""

from kfp import dsl, kubernetes

from components.deploy.component import deploy_canary
from components.evaluate.component import evaluate
from components.features.component import features
from components.ingest.component import ingest
from components.register.component import register
from components.train.component import train
from components.training_set.component import training_set
from components.validate.component import validate_data
from mlplatform.params import DEFAULTS
from mlplatform.rollout.settings import CanarySettings
from mlplatform.settings import PlatformSettings

PIPELINE_NAME = "fraud-training"
#: Node label and taint of the GPU nodes the train task runs on (kind-config.yaml sets them too).
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_ACCELERATOR = "nvidia.com/gpu"
#: ConfigMap with the components' MLPLATFORM_* settings on a cluster (helm/mlplatform creates it for release
#: `mlplatform`); each task reads every settings variable from it, optionally (absent keys keep the defaults).
SETTINGS_CONFIG_MAP = "mlplatform-pipeline-settings"
#: Secret with the pipeline runner's MLflow credentials (keys `username`, `password`) in the namespace the steps
#: run in; each task reads it, optionally (a tracking server without authentication needs none). The registry
#: lets this identity register versions and move aliases (docs/adr/0017-registry-access-control.md).
MLFLOW_CREDENTIALS_SECRET = "mlplatform-mlflow-pipeline-runner"
MLFLOW_CREDENTIALS_ENV = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}


def settings_env_names() -> list[str]:
    """Every MLPLATFORM_* variable the components' settings classes read."""

    return [f"MLPLATFORM_{name.upper()}" for name in PlatformSettings.model_fields] + [
        f"MLPLATFORM_CANARY_{name.upper()}" for name in CanarySettings.model_fields
    ]


def with_settings(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Give a task the platform settings of the cluster (SETTINGS_CONFIG_MAP) and the pipeline runner's MLflow
    credentials (MLFLOW_CREDENTIALS_SECRET) as environment variables."""
    names = settings_env_names()
    kubernetes.use_config_map_as_env(task, SETTINGS_CONFIG_MAP, dict(zip(names, names, strict=True)), optional=True)
    return kubernetes.use_secret_as_env(task, MLFLOW_CREDENTIALS_SECRET, MLFLOW_CREDENTIALS_ENV, optional=True)


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Train, evaluate, register the fraud model, then canary it and promote or roll back.",
)
def training_pipeline(
    n_transactions: int = DEFAULTS.n_transactions,
    n_days: int = DEFAULTS.n_days,
    seed: int = DEFAULTS.seed,
    fraud_rate: float = DEFAULTS.fraud_rate,
    drift: float = DEFAULTS.drift,
    source_path: str = DEFAULTS.source_path,
    validation_days: int = DEFAULTS.validation_days,
    test_days: int = DEFAULTS.test_days,
    warmup_days: int = DEFAULTS.warmup_days,
    max_epochs: int = DEFAULTS.max_epochs,
    batch_size: int = DEFAULTS.batch_size,
    learning_rate: float = DEFAULTS.learning_rate,
    trigger: str = DEFAULTS.trigger,
    tuning_run_id: str = DEFAULTS.tuning_run_id,
) -> str:
    """Raw data to a registered model version (parameter ranges: mlplatform.params.PipelineParams).

    Args:
        n_transactions: Transactions to generate.
        n_days: Days the transactions span.
        seed: Seed of the generator and of training.
        fraud_rate: Share of fraud to generate.
        drift: Distribution shift to generate (0 to 1).
        source_path: Existing raw snapshot (Parquet) to use instead of generating one.
        validation_days: Days before the test window used for validation.
        test_days: Last days held out for the test.
        warmup_days: First days left out of training (the 30-day aggregates are still filling).
        max_epochs: Upper bound on training epochs.
        batch_size: Rows per training step.
        learning_rate: AdamW learning rate.
        trigger: Why the run was started (manual, schedule, alert:<alertname>@<fingerprint>); an MLflow run tag.
        tuning_run_id: MLflow run of `mlplatform tune` whose best hyperparameters the train step uses instead
            of max_epochs, batch_size and learning_rate; empty (the default): those.

    Returns:
        The register step's JSON summary with the deployment's outcome (deployed, promoted or rolled back).
    """
    raw = ingest(
        n_transactions=n_transactions,
        n_days=n_days,
        seed=seed,
        fraud_rate=fraud_rate,
        drift=drift,
        source_path=source_path,
    ).set_display_name("ingest")
    raw.set_cpu_request("1").set_memory_request("2Gi").set_memory_limit("8Gi")

    feats = features(raw=raw.outputs["raw"]).set_display_name("features")
    feats.set_caching_options(False)  # writes the online store: a side effect, never skipped
    feats.set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2)
    feats.set_cpu_request("1").set_memory_request("4Gi").set_memory_limit("16Gi")

    splits = training_set(
        raw=raw.outputs["raw"],
        feature_state=feats.outputs["feature_state"],
        validation_days=validation_days,
        test_days=test_days,
        warmup_days=warmup_days,
    ).set_display_name("training set")
    splits.set_cpu_request("2").set_memory_request("4Gi").set_memory_limit("16Gi")

    checked = validate_data(
        train=splits.outputs["train"],
        validation=splits.outputs["validation"],
        test=splits.outputs["test"],
        trigger=trigger,
    ).set_display_name("validate data")
    checked.set_caching_options(False)  # compares with the champion, which changes between runs

    trained = (
        train(
            train=splits.outputs["train"],
            validation=splits.outputs["validation"],
            max_epochs=max_epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            tuning_run_id=tuning_run_id,
        )
        .set_display_name("train")
        .after(checked)
    )
    trained.set_caching_options(False)  # creates an MLflow run
    trained.set_cpu_request("4").set_memory_request("8Gi").set_memory_limit("32Gi")
    trained.set_accelerator_type(GPU_ACCELERATOR).set_accelerator_limit(1)
    kubernetes.add_node_selector(trained, label_key=GPU_NODE_LABEL[0], label_value=GPU_NODE_LABEL[1])
    kubernetes.add_toleration(trained, key=GPU_TAINT_KEY, operator="Exists", effect="NoSchedule")

    evaluated = evaluate(
        model=trained.outputs["model"],
        validation=splits.outputs["validation"],
        test=splits.outputs["test"],
        mlflow_run_id=trained.outputs["Output"],
    ).set_display_name("evaluate")
    evaluated.set_caching_options(False)  # compares with the current champion

    registered = register(
        mlflow_run_id=trained.outputs["Output"],
        evaluation=evaluated.outputs["Output"],
        ingest_summary=raw.outputs["Output"],
        feature_versions=feats.outputs["Output"],
        pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        trigger=trigger,
    ).set_display_name("register")
    registered.set_caching_options(False)
    registered.set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2)

    deployed = deploy_canary(
        registered=registered.outputs["registered"],
        version=registered.outputs["version"],
        register_summary=registered.outputs["summary"],
    ).set_display_name("deploy canary + analyse")
    deployed.set_caching_options(False)  # moves production traffic: a side effect
    for task in (raw, feats, splits, checked, trained, evaluated, registered, deployed):
        with_settings(task)
    # no retry: a rollout that failed midway has already rolled back; a second one would judge it again
    return deployed.outputs["Output"]
