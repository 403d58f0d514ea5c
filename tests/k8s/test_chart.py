"""The Helm chart: helm lint --strict, kubeconform -strict on every profile, and its important switches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

from pipelines.training import MLFLOW_CREDENTIALS_SECRET
from tests.k8s import kube
from tests.k8s.kube import find, objects

pytestmark = pytest.mark.k8s

CASES = [(p, False) for p in kube.PROFILES] + [(p, True) for p in ("default", "kind", "production")]
IDS = [f"{p}{'+model' if m else ''}" for p, m in CASES]


@pytest.mark.parametrize(("profile", "with_model"), CASES, ids=IDS)
def test_helm_lint_strict_passes(profile: str, with_model: bool) -> None:
    result = kube.helm("lint", profile, kube.WITH_MODEL if with_model else {})
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(("profile", "with_model"), CASES, ids=IDS)
def test_every_rendered_object_is_valid_against_kubernetes_and_crd_schemas(
    render, profile: str, with_model: bool
) -> None:
    manifest = render(profile, with_model)
    report = kube.kubeconform(manifest)
    summary = report["summary"]
    assert summary["valid"] == len(objects(manifest)) > 0
    assert summary["invalid"] == summary["errors"] == summary["skipped"] == 0


SEPARATE = {"fraudDetector": {"layout": "separate"}}


def test_the_separate_pods_layout_is_valid_against_the_kserve_crd_and_lints() -> None:
    """The default layout (collocated) is in every case above; the separate one is checked alike."""
    manifest = kube.helm_template("production", kube.WITH_MODEL, SEPARATE)
    summary = kube.kubeconform(manifest)["summary"]
    assert summary["valid"] == len(objects(manifest)) > 0
    assert summary["invalid"] == summary["errors"] == summary["skipped"] == 0
    assert "0 chart(s) failed" in kube.helm("lint", "production", kube.WITH_MODEL, SEPARATE).stdout


def test_kubeconform_rejects_unknown_fields_in_core_and_custom_resources(render) -> None:
    """The negative control: strict schemas are in force for both kinds of schema."""
    for kind, field in (("Deployment", "spec:\n  replicas:"), ("InferenceService", "spec:\n  predictor:")):
        docs = render("kind", True).split("\n---\n")
        doc = next(d for d in docs if f"\nkind: {kind}\n" in d)
        broken = doc.replace(field, field.replace("spec:", "spec:\n  notAField: 1"), 1)
        assert broken != doc
        with pytest.raises(AssertionError, match="notAField"):
            kube.kubeconform(broken)


def test_values_schema_is_generated_from_the_documented_values() -> None:
    result = subprocess.run([sys.executable, "scripts/values_schema.py", "--check"], cwd=kube.ROOT, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


def test_values_schema_rejects_a_misspelled_key() -> None:
    with pytest.raises(AssertionError, match="replicCount"):
        kube.helm("template", "default", {"mlflow": {"replicCount": 2}})


def test_enabling_the_inference_service_without_a_model_location_fails_with_the_fix() -> None:
    with pytest.raises(AssertionError, match="fraudDetector.model.storageUri is required"):
        kube.helm("template", "default", {"fraudDetector": {"enabled": True, "model": {"version": "1"}}})


def test_production_refuses_an_inference_endpoint_without_its_token_secret() -> None:
    """The production profile requires the bearer token (security.requireInferenceToken); others may go without."""
    no_token = {"fraudDetector": {"transformer": {"authToken": {"existingSecret": ""}}}}
    with pytest.raises(AssertionError, match="set fraudDetector.transformer.authToken.existingSecret to its name"):
        kube.helm("template", "production", kube.WITH_MODEL, no_token)
    assert kube.helm_template("kind", kube.WITH_MODEL, no_token)
    assert kube.helm_template("production", no_token)  # no InferenceService, no endpoint to protect


def test_canary_traffic_percent_is_rendered_only_when_set(render) -> None:
    off = find(objects(render("kind", True)), "InferenceService")
    assert "canaryTrafficPercent" not in off["spec"]["predictor"]
    on = find(
        objects(kube.helm_template("kind", kube.WITH_MODEL, {"fraudDetector": {"canaryTrafficPercent": 10}})),
        "InferenceService",
    )
    assert on["spec"]["predictor"]["canaryTrafficPercent"] == 10
    with pytest.raises(AssertionError, match="canaryTrafficPercent"):
        kube.helm("template", "kind", kube.WITH_MODEL, {"fraudDetector": {"canaryTrafficPercent": 120}})


def test_monitoring_switch_creates_pod_monitors_only_when_enabled(render) -> None:
    assert not [d for d in objects(render("default", True)) if d["kind"] == "PodMonitor"]
    monitors = {d["metadata"]["name"]: d for d in objects(render("kind", True)) if d["kind"] == "PodMonitor"}
    assert set(monitors) == {"mlplatform-fraud-detector", "mlplatform-feature-server"}
    isvc = monitors["mlplatform-fraud-detector"]
    assert isvc["spec"]["selector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": "fraud-detector"}
    # collocated (the default): the transformer's port and the predictor's beside it; no pod label copied onto
    # the series (a collocated pod holds both components: each series names its own)
    assert [e["portNumber"] for e in isvc["spec"]["podMetricsEndpoints"]] == [8080, 8085]
    assert "podTargetLabels" not in isvc["spec"]
    separate = find(objects(kube.helm_template("kind", kube.WITH_MODEL, SEPARATE)), "PodMonitor", "fraud-detector")
    assert [e["portNumber"] for e in separate["spec"]["podMetricsEndpoints"]] == [8080]
    assert all(m["metadata"]["labels"]["release"] == "kube-prometheus-stack" for m in monitors.values())


def _secret_refs(docs: list[dict]) -> set[str]:
    refs: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                refs.add(node["secretKeyRef"]["name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(docs)
    return refs


def test_credentials_come_from_existing_secrets_and_the_chart_renders_none(render) -> None:
    for profile in kube.PROFILES:
        assert not [d for d in objects(render(profile, False)) if d["kind"] == "Secret"]
    default = _secret_refs(objects(render("default", True)))
    assert default == {
        "mlplatform-mlflow-backend-store",
        "mlplatform-mlflow-artifact-store",
        "mlplatform-mlflow-admin",
        "mlplatform-mlflow-auth-db",
        "mlplatform-mlflow-pipeline-runner",
        "mlplatform-mlflow-approver",
        "mlplatform-mlflow-monitor",
        "mlplatform-feast-registry",
    }
    production = _secret_refs(objects(render("production", True)))
    assert {"mlplatform-redis", "mlplatform-serving-token"} <= production
    custom = objects(kube.helm_template("default", {"mlflow": {"backendStore": {"existingSecret": "my-db"}}}))
    assert "my-db" in _secret_refs(custom)


def _env_refs(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value, or (Secret, key) for a value from a Secret."""
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        if "valueFrom" in e
        else e.get("value")
        for e in container.get("env", [])
    }


@pytest.mark.parametrize("profile", list(kube.PROFILES))
def test_mlflow_runs_the_auth_app_with_its_admin_and_auth_database_from_existing_secrets(render, profile: str) -> None:
    """Registry access control (docs/adr/0017): every request authenticated, users and permissions in the auth
    database, whose URL reaches the server's auth file through a memory-backed volume, never the chart."""
    pod = find(objects(render(profile, False)), "Deployment", "mlflow")["spec"]["template"]["spec"]
    [server] = pod["containers"]
    assert server["command"] == ["mlflow", "server"] and server["args"][0] == "--app-name=basic-auth"
    env = _env_refs(server)
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow-auth/basic_auth.ini"
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == ("mlplatform-mlflow-admin", "username")
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == ("mlplatform-mlflow-admin", "password")
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == ("mlplatform-mlflow-admin", "flask-secret-key")
    [init] = pod["initContainers"]
    assert init["command"][-3:] == ["registry-access", "server-config", env["MLFLOW_AUTH_CONFIG_PATH"]]
    assert _env_refs(init)["MLPLATFORM_REGISTRY_ACCESS_DATABASE_URI"] == ("mlplatform-mlflow-auth-db", "uri")
    assert _env_refs(init)["MLPLATFORM_REGISTRY_ACCESS_DEFAULT_PERMISSION"] == "NO_PERMISSIONS"
    volume = next(v for v in pod["volumes"] if v["name"] == "auth-config")
    assert volume["emptyDir"]["medium"] == "Memory"
    mount = next(m for m in server["volumeMounts"] if m["name"] == "auth-config")
    assert mount == {"name": "auth-config", "mountPath": "/etc/mlflow-auth", "readOnly": True}
    # the probes stay unauthenticated: MLflow serves /health to anyone
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"


def test_without_auth_the_server_has_no_auth_app_file_or_bootstrap() -> None:
    docs = objects(kube.helm_template("default", {"mlflow": {"auth": {"enabled": False}}}))
    pod = find(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]
    assert "--app-name=basic-auth" not in pod["containers"][0]["args"] and "initContainers" not in pod
    assert not [d for d in docs if d["kind"] == "Job"]


def test_the_access_bootstrap_runs_after_install_and_upgrade_as_the_admin_with_each_identitys_secret(render) -> None:
    job = find(objects(render("default", False)), "Job", "mlflow-access")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    [apply] = pod["containers"]
    assert apply["command"][-2:] == ["registry-access", "apply"]
    env = _env_refs(apply)
    assert env["MLFLOW_TRACKING_USERNAME"] == ("mlplatform-mlflow-admin", "username")
    assert env["MLFLOW_TRACKING_PASSWORD"] == ("mlplatform-mlflow-admin", "password")
    assert env["MLPLATFORM_MLFLOW_TRACKING_URI"] == "http://mlplatform-mlflow.mlplatform.svc.cluster.local:5000"
    identities = {k: v for k, v in env.items() if k.startswith("MLPLATFORM_REGISTRY_ACCESS_") and "WAIT" not in k}
    assert identities == {
        f"MLPLATFORM_REGISTRY_ACCESS_{role}_{field.upper()}": (f"mlplatform-mlflow-{secret}", field)
        for role, secret in (("PIPELINE_RUNNER", "pipeline-runner"), ("APPROVER", "approver"), ("MONITOR", "monitor"))
        for field in ("username", "password")
    }  # serving: no Secret by default, so no user
    serving = {"mlflow": {"auth": {"identities": {"serving": {"existingSecret": "my-serving"}}}}}
    env = _env_refs(
        find(objects(kube.helm_template("default", serving)), "Job", "mlflow-access")["spec"]["template"]["spec"][
            "containers"
        ][0]
    )
    assert env["MLPLATFORM_REGISTRY_ACCESS_SERVING_USERNAME"] == ("my-serving", "username")
    with pytest.raises(AssertionError, match="mlflow.auth.identities.pipelineRunner.existingSecret is required"):
        kube.helm(
            "template", "default", {"mlflow": {"auth": {"identities": {"pipelineRunner": {"existingSecret": ""}}}}}
        )


def test_the_pipeline_steps_and_the_monitor_authenticate_with_their_own_secrets_and_serving_with_none() -> None:
    """The steps read the runner's Secret by the name the compiled pipeline carries; the monitor its own; the
    InferenceService fetches weights from the artifact store and holds no MLflow credentials at all."""
    values = kube.merge(
        kube.WITH_MODEL,
        {"monitoring": {"enabled": True}, "fraudDetector": {"predictionLog": {"persistence": {"enabled": True}}}},
    )
    docs = objects(kube.helm_template("default", values))
    defaults = yaml.safe_load((kube.CHART / "values.yaml").read_text())
    assert defaults["mlflow"]["auth"]["identities"]["pipelineRunner"]["existingSecret"] == MLFLOW_CREDENTIALS_SECRET
    monitor = _env_refs(find(docs, "Deployment", "monitor")["spec"]["template"]["spec"]["containers"][0])
    assert monitor["MLFLOW_TRACKING_USERNAME"] == ("mlplatform-mlflow-monitor", "username")
    assert monitor["MLFLOW_TRACKING_PASSWORD"] == ("mlplatform-mlflow-monitor", "password")
    isvc = find(docs, "InferenceService", "fraud-detector")
    assert "MLFLOW_TRACKING" not in str(isvc)


def test_pipeline_runner_may_only_get_and_patch_inference_services_in_its_namespace(render) -> None:
    docs = objects(render("kind", True))
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = [d for d in docs if d["kind"] == "Role"]
    assert len(roles) == 1 and roles[0]["metadata"]["namespace"] == kube.NAMESPACE
    # get + patch (server-side apply) of the one InferenceService the deploy step and the rollout controller
    # (ClusterBackend: GET, then PATCH application/apply-patch+yaml) work on; no create, list, watch or delete.
    assert roles[0]["rules"] == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "resourceNames": ["fraud-detector"],
            "verbs": ["get", "patch"],
        }
    ]
    binding = find(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == roles[0]["metadata"]["name"]
    assert {(s["name"], s["namespace"]) for s in binding["subjects"]} == {
        ("mlplatform-pipeline-runner", kube.NAMESPACE),
        ("pipeline-runner", "kubeflow"),
    }


def test_only_the_pipeline_runner_mounts_an_api_token(render) -> None:
    docs = objects(render("production", True))
    accounts = {d["metadata"]["name"]: d["automountServiceAccountToken"] for d in docs if d["kind"] == "ServiceAccount"}
    assert accounts.pop("mlplatform-pipeline-runner") is True
    assert accounts and not any(accounts.values())


def test_disruption_budgets_exist_only_where_there_is_more_than_one_replica(render) -> None:
    assert not [d for d in objects(render("default", True)) if d["kind"] == "PodDisruptionBudget"]
    pdbs = {d["metadata"]["name"] for d in objects(render("production", True)) if d["kind"] == "PodDisruptionBudget"}
    assert pdbs == {"mlplatform-mlflow", "mlplatform-feature-server"}


def test_prediction_log_is_an_empty_dir_by_default_and_a_claim_in_production(render) -> None:
    def log_volume(docs: list[dict], part: str = "predictor") -> dict:
        volumes = find(docs, "InferenceService")["spec"][part]["volumes"]
        return next(v for v in volumes if v["name"] == "prediction-log")

    assert "emptyDir" in log_volume(objects(render("default", True)))
    separate = objects(kube.helm_template("default", kube.WITH_MODEL, SEPARATE))
    assert "emptyDir" in log_volume(separate, "transformer")
    production = objects(render("production", True))
    claim = find(production, "PersistentVolumeClaim", "prediction-log")
    assert log_volume(production)["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_distributed_training_grants_the_runner_its_trainjobs_and_a_shared_claim_in_production(render) -> None:
    """distributedTraining (on in production): the Role the distributed train task needs in the pipelines'
    namespace, bound to the runner, and the ReadWriteMany claim it shares with the TrainJob's pods (kept on
    uninstall: checkpoints to resume from). The authorizer's view of it is in tests/k8s/test_rbac_cluster.py."""
    default = objects(render("default", True))
    assert not [d for d in default if "distributed-training" in d["metadata"]["name"]]
    production = objects(render("production", True))
    role = find(production, "Role", "distributed-training")
    assert role["rules"] == [
        {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"], "verbs": ["create", "get", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    ]
    binding = find(production, "RoleBinding", "distributed-training")
    runner = find(production, "ServiceAccount", "pipeline-runner")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {"kind": "ServiceAccount", "name": runner["metadata"]["name"], "namespace": "mlplatform"} in binding[
        "subjects"
    ]
    claim = find(production, "PersistentVolumeClaim", "training-shared")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@pytest.mark.parametrize("layout", ["collocated", "separate"])
def test_serving_runtime_and_inference_service_follow_the_serving_contract(layout: str) -> None:
    docs = objects(kube.helm_template("production", kube.WITH_MODEL, {"fraudDetector": {"layout": layout}}))
    collocated = layout == "collocated"
    runtime = find(docs, "ServingRuntime")
    assert runtime["metadata"]["name"] == "mlplatform-fraud"
    spec = runtime["spec"]
    assert spec["supportedModelFormats"] == [{"name": "mlplatform-fraud-mlp", "version": "1", "autoSelect": True}]
    assert spec["protocolVersions"] == ["v1", "v2"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == "ghcr.io/mlplatform/mlplatform-serving:0.1.0"
    assert container["command"] == ["python", "-m", "serving.predictor"]
    ports = ("8085", "8086") if collocated else ("8080", "8081")
    assert container["args"] == [
        "--model_name={{.Name}}",
        "--model_dir=/mnt/models",
        f"--http_port={ports[0]}",
        f"--grpc_port={ports[1]}",
    ]
    # Knative routes to the one container that declares a port: collocated, that is the transformer
    assert container.get("ports") == (None if collocated else [{"containerPort": 8080, "protocol": "TCP"}])

    isvc = find(docs, "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["metadata"]["name"] == "fraud-detector"
    assert isvc["metadata"]["annotations"] == {
        "mlplatform.io/model-name": "fraud-detector",
        "mlplatform.io/model-version": "3",
        "mlplatform.io/role": "stable",
        "serving.kserve.io/enable-prometheus-scraping": "true",
    }
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "mlplatform-fraud-mlp"} and model["runtime"] == "mlplatform-fraud"
    assert model["storageUri"] == kube.WITH_MODEL["fraudDetector"]["model"]["storageUri"]
    env = {e["name"]: e for e in model["env"]}
    assert (
        env["MLPLATFORM_SERVING_MODEL_VERSION"]["value"] == "3" and env["MLPLATFORM_SERVING_ROLE"]["value"] == "stable"
    )

    if collocated:
        assert "transformer" not in isvc["spec"]
        (transformer,) = isvc["spec"]["predictor"]["containers"]
        assert transformer["name"] == "transformer-container"  # the name KServe's controller collocates
        assert transformer["args"] == [
            "--model_name=fraud-detector",
            "--http_port=8080",
            "--grpc_port=8081",
            "--predictor_host=localhost:8085",
            "--enable_predictor_health_check",
        ]
        assert transformer["readinessProbe"]["httpGet"] == {"path": "/v2/models/fraud-detector/ready", "port": 8080}
    else:
        (transformer,) = isvc["spec"]["transformer"]["containers"]
        assert transformer["name"] == "kserve-container"
        assert transformer["args"] == ["--model_name=fraud-detector"]  # KServe adds --predictor_host, --http_port
    assert transformer["command"] == ["python", "-m", "serving.transformer"]
    env = {e["name"]: e for e in transformer["env"]}
    assert env["MLPLATFORM_SERVING_FEAST_CONFIG_FILE"]["value"] == "feature_store_redis_postgres.yaml"
    assert env["MLPLATFORM_FEAST_REGISTRY"]["valueFrom"]["secretKeyRef"]["name"] == "mlplatform-feast-registry"
    assert env["MLPLATFORM_FEAST_REDIS"]["value"].startswith("redis-master.feast.svc.cluster.local:6379,password=")
    assert env["MLPLATFORM_SERVING_PREDICTION_LOG_DIR"]["value"] == "/var/lib/mlplatform/predictions"
    assert env["MLPLATFORM_SERVING_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "mlplatform-serving-token"
    mounts = {m["mountPath"] for m in transformer["volumeMounts"]}
    assert mounts == {"/tmp", "/var/lib/mlplatform/predictions"}
    # collocated, both containers name the tensor hop's socket in the pod's tmp volume, which both mount at /tmp
    socket = "/tmp/mlplatform-hop/predictor.sock"
    runtime_env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert runtime_env.get("MLPLATFORM_SERVING_PREDICTOR_SOCKET") == (socket if collocated else None)
    assert env.get("MLPLATFORM_SERVING_PREDICTOR_SOCKET", {}).get("value") == (socket if collocated else None)
    if collocated:
        predictor_mounts = {m["mountPath"]: m["name"] for m in model["volumeMounts"]}
        transformer_mounts = {m["mountPath"]: m["name"] for m in transformer["volumeMounts"]}
        assert predictor_mounts["/tmp"] == transformer_mounts["/tmp"] == "tmp"


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _fields(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for key, value in obj.items():
        out.update(_fields(value, (*prefix, key)) if isinstance(value, dict) and value else {(*prefix, key): value})
    return out


@pytest.mark.parametrize("profile", ["default", "kind", "production"])
def test_rollouts_apply_only_fields_the_chart_renders_alike_for_the_same_version(
    profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mlplatform deploy` and the rollout controller server-side apply mlplatform.deploy.cluster.render_manifest over
    the chart's InferenceService, with PlatformSettings read from the chart's pipeline-settings ConfigMap.
    Every field they set must hold the value the chart renders for that version and role: then a rollout
    changes the version and nothing the chart decides (transformer, volumes, credentials), and `helm upgrade`
    to the promoted version changes nothing either. tests/k8s/test_rollout_cluster.py merges them."""
    from mlplatform.deploy import inferenceservice
    from mlplatform.deploy.artifact import storage_uri
    from mlplatform.deploy.cluster import render_manifest
    from mlplatform.registry import RegisteredVersion
    from mlplatform.settings import PlatformSettings

    source = "mlflow-artifacts:/1/0123456789abcdef/artifacts/model"  # what the tracking server records
    version = RegisteredVersion("fraud-detector", "3", source, "run", ["champion"], {})
    settings_map = find(objects(kube.helm_template(profile, kube.WITH_MODEL)), "ConfigMap", "pipeline-settings")
    # the install guide's storageUri: the version's artifacts in the store the MLflow server writes to
    uri = settings_map["data"]["MLPLATFORM_MLFLOW_ARTIFACTS_DESTINATION"] + source.removeprefix("mlflow-artifacts:")
    for role, percent in (("stable", None), ("canary", 10)):
        model = {"version": "3", "storageUri": uri}
        values = {"fraudDetector": {"role": role, "canaryTrafficPercent": percent, "model": model}}
        docs = objects(kube.helm_template(profile, kube.WITH_MODEL, values))
        for key in [k for k in os.environ if k.startswith("MLPLATFORM_")]:
            monkeypatch.delenv(key)
        for key, value in find(docs, "ConfigMap", "pipeline-settings")["data"].items():
            monkeypatch.setenv(key, value)
        settings = PlatformSettings()
        rendered = render_manifest(settings, version, storage_uri(source, settings), percent, role)
        chart = _fields(find(docs, "InferenceService"))
        applied = _fields(rendered)
        assert {path: chart.get(path) for path in applied} == applied
        assert not any(
            path[:2] == ("spec", "transformer") or path[:3] == ("spec", "predictor", "containers") for path in applied
        )
        # collocated, the transformer of each revision reports the version and role the applied annotations
        # carry: KServe's controller fills these placeholders in from them (tests/k8s/test_rollout_cluster.py)
        (transformer,) = find(docs, "InferenceService")["spec"]["predictor"]["containers"]

        def placeholder(annotation: str) -> str:
            return "{{index .Annotations `" + annotation + "`}}"

        env = _env(transformer)
        assert env["MLPLATFORM_SERVING_MODEL_VERSION"] == placeholder(inferenceservice.ANNOTATION_MODEL_VERSION)
        assert env["MLPLATFORM_SERVING_ROLE"] == placeholder(inferenceservice.ANNOTATION_ROLE)
        annotations = rendered["metadata"]["annotations"]
        assert annotations[inferenceservice.ANNOTATION_MODEL_VERSION] == "3"
        assert annotations[inferenceservice.ANNOTATION_ROLE] == role


def test_the_helm_test_hook_checks_every_enabled_endpoint(render) -> None:
    pod = find(objects(render("kind", True)), "Pod", "test-endpoints")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    urls = pod["spec"]["containers"][0]["args"]
    assert [u.split("/")[2].split(".")[0] for u in urls] == [
        "mlplatform-mlflow",
        "mlplatform-feature-server",
        "fraud-detector-predictor",
        "mlplatform-monitor",
        "mlplatform-webhook",
    ]
    assert urls[-2:] == [
        "http://mlplatform-monitor.mlplatform.svc.cluster.local:9108/healthz",
        "http://mlplatform-webhook.mlplatform.svc.cluster.local:9109/healthz",
    ]
    without_model = find(objects(render("kind", False)), "Pod", "test-endpoints")["spec"]["containers"][0]["args"]
    assert "mlplatform-monitor" not in " ".join(without_model) and "mlplatform-webhook" in " ".join(without_model)
    assert not [d for d in objects(render("minimal", False)) if d["kind"] == "Pod"]


def test_notes_say_how_to_reach_each_endpoint(tmp_path) -> None:
    """NOTES.txt rendered for the kind profile (`helm install --dry-run` needs a cluster; `tpl` does not)."""
    chart = tmp_path / "mlplatform"
    shutil.copytree(kube.CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "notes-rendered.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
        '{{ tpl (.Files.Get "notes.txt") . | indent 4 }}\n'
    )
    result = kube.run(
        kube.tool("helm"),
        "template",
        "mlplatform",
        str(chart),
        "--namespace",
        kube.NAMESPACE,
        "-f",
        str(kube.PROFILES["kind"][0]),
        "--show-only",
        "templates/notes-rendered.yaml",
    )
    notes = objects(result.stdout)[0]["data"]["notes"]
    assert "port-forward svc/mlplatform-mlflow 5000:5000" in notes
    assert "port-forward svc/mlplatform-feature-server 6566:6566" in notes
    assert "fraudDetector.enabled=true" in notes and "helm test mlplatform" in notes
    assert "http://mlplatform-webhook.mlplatform.svc.cluster.local:9109/alerts" in notes
    assert "port-forward svc/kube-prometheus-stack-grafana 3000:80" in notes


KAFKA = kube.WITH_KAFKA


def _transformer(isvc: dict[str, Any]) -> dict[str, Any]:
    """The transformer's container of an InferenceService, in either layout."""
    spec = isvc["spec"]
    containers = spec.get("transformer", {}).get("containers", []) + spec["predictor"].get("containers", [])
    [container] = [c for c in containers if c.get("command", [])[-1:] == ["serving.transformer"]]
    return container


@pytest.mark.parametrize("layout", ["collocated", "separate"])
def test_kafka_by_reference_gives_the_transformer_its_settings_spool_and_credentials(layout: str) -> None:
    """The chart takes Kafka by reference: the transformer gets every MLPLATFORM_SERVING_KAFKA_* setting it reads
    (names checked against ServingSettings), the password from the user's Secret, the CA from the cluster's, and a
    spool volume; the Strimzi KafkaTopics and KafkaUser are valid against the Strimzi CRDs (ADR 0018)."""
    from serving.settings import ServingSettings

    manifest = kube.helm_template("production", kube.WITH_MODEL, KAFKA, {"fraudDetector": {"layout": layout}})
    summary = kube.kubeconform(manifest)["summary"]
    assert summary["valid"] == len(objects(manifest)) and summary["errors"] == summary["invalid"] == 0
    container = _transformer(find(objects(manifest), "InferenceService"))
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    kafka_env = {k for k in env if "KAFKA" in k or "EVENT" in k}
    fields = {f"{ServingSettings.model_config['env_prefix']}{name.upper()}" for name in ServingSettings.model_fields}
    assert kafka_env <= fields, f"settings the transformer does not read: {sorted(kafka_env - fields)}"
    assert env["MLPLATFORM_SERVING_KAFKA_BOOTSTRAP_SERVERS"] == "events-kafka-bootstrap:9093"
    assert env["MLPLATFORM_SERVING_KAFKA_SASL_PASSWORD"] == {
        "secretKeyRef": {"name": "mlplatform-serving", "key": "password"}
    }
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["event-spool"] == env["MLPLATFORM_SERVING_EVENT_SPOOL_DIR"]
    assert env["MLPLATFORM_SERVING_KAFKA_SSL_CA_LOCATION"].startswith(mounts["kafka-ca"])
    plain = kube.helm_template("production", kube.WITH_MODEL, {"fraudDetector": {"layout": layout}})
    assert "KAFKA" not in yaml.safe_dump(_transformer(find(objects(plain), "InferenceService")))


def test_strimzi_topics_are_the_ones_the_code_declares_and_the_user_may_only_publish() -> None:
    from mlplatform.events import PREDICTIONS, TOPICS, TRANSACTIONS

    docs = objects(kube.helm_template("default", KAFKA))
    topics = {
        d["spec"]["topicName"]: (d["spec"]["partitions"], d["spec"]["config"]["retention.ms"])
        for d in docs
        if d["kind"] == "KafkaTopic"
    }
    assert topics == {t.name: (t.partitions, t.retention_days * 86_400_000) for t in TOPICS}
    assert all(d["metadata"]["labels"]["strimzi.io/cluster"] == "events" for d in docs if d["kind"] == "KafkaTopic")
    [user] = [d for d in docs if d["kind"] == "KafkaUser" and d["metadata"]["name"] == "mlplatform-serving"]
    acls = user["spec"]["authorization"]["acls"]
    assert {a["resource"].get("name") for a in acls if a["resource"]["type"] == "topic"} == {
        TRANSACTIONS.name,
        PREDICTIONS.name,
    }
    assert {op for a in acls for op in a["operations"]} == {"Write", "Describe", "IdempotentWrite"}
    assert not [d for d in objects(kube.helm_template("default")) if d["kind"].startswith("Kafka")]


def test_kafka_without_brokers_or_sasl_credentials_fails_with_the_fix() -> None:
    with pytest.raises(AssertionError, match="kafka.enabled needs kafka.bootstrapServers"):
        kube.helm("template", "default", kube.WITH_MODEL, {"kafka": {"enabled": True}})
    no_secret = {"kafka": {**KAFKA["kafka"], "sasl": {"existingSecret": ""}}}
    with pytest.raises(AssertionError, match="needs kafka.sasl.existingSecret"):
        kube.helm("template", "default", kube.WITH_MODEL, no_secret)


def test_stream_feature_processor_deploys_as_a_consumer_group_with_health_metrics_pdb_and_a_read_only_user() -> None:
    """Its own Deployment (replicas share the partitions), /healthz probes and a PodMonitor on the port it serves,
    a PodDisruptionBudget, every MLPLATFORM_STREAM_* setting one StreamSettings reads, the password from the
    user's Secret, and a KafkaUser that may read transactions and write dead letters only: all valid against the
    Kubernetes, Prometheus Operator and Strimzi schemas (ADR 0019)."""
    from mlplatform.events import DEAD_LETTER, TRANSACTIONS
    from mlplatform.features.stream import StreamSettings
    from mlplatform.settings import PlatformSettings

    manifest = kube.helm_template("production", kube.WITH_MODEL, KAFKA, kube.WITH_STREAM_FEATURES)
    summary = kube.kubeconform(manifest)["summary"]
    assert summary["valid"] == len(objects(manifest)) and summary["errors"] == summary["invalid"] == 0
    docs = objects(manifest)
    name = "mlplatform-stream-features"
    [deployment] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    assert deployment["spec"]["replicas"] == 2
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    stream = {f"{StreamSettings.model_config['env_prefix']}{n.upper()}" for n in StreamSettings.model_fields}
    platform = {f"{PlatformSettings.model_config['env_prefix']}{n.upper()}" for n in PlatformSettings.model_fields}
    # read by feature_store_redis_postgres.yaml (the password through $(MLPLATFORM_FEAST_REDIS_PASSWORD) in the URL)
    feast = {"MLPLATFORM_FEAST_REGISTRY", "MLPLATFORM_FEAST_REDIS", "MLPLATFORM_FEAST_REDIS_PASSWORD"}
    unread = set(env) - stream - platform - feast - {"HOME"}
    assert not unread, f"settings nothing reads: {sorted(unread)}"
    StreamSettings.model_validate(  # the rendered values are valid settings
        {k.removeprefix("MLPLATFORM_STREAM_").lower(): v for k, v in env.items() if k in stream and isinstance(v, str)}
        | {"kafka_sasl_password": "x"}
    )
    assert env["MLPLATFORM_STREAM_KAFKA_SASL_PASSWORD"] == {
        "secretKeyRef": {"name": "mlplatform-stream-features", "key": "password"}
    }
    port = int(env["MLPLATFORM_STREAM_PORT"])
    assert [p["containerPort"] for p in container["ports"]] == [port]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    [pdb] = [d for d in docs if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == name]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [monitor] = [d for d in docs if d["kind"] == "PodMonitor" and d["metadata"]["name"] == name]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    [user] = [d for d in docs if d["kind"] == "KafkaUser" and d["metadata"]["name"] == name]
    grants = {
        (a["resource"]["type"], a["resource"].get("name"), op)
        for a in user["spec"]["authorization"]["acls"]
        for op in a["operations"]
    }
    assert grants == {
        ("topic", TRANSACTIONS.name, "Read"),
        ("topic", TRANSACTIONS.name, "Describe"),
        ("group", "mlplatform-stream-features", "Read"),
        ("topic", DEAD_LETTER.name, "Write"),
        ("topic", DEAD_LETTER.name, "Describe"),
        ("cluster", None, "IdempotentWrite"),
    }
    one = kube.helm_template("default", KAFKA, kube.WITH_STREAM_FEATURES, {"streamFeatures": {"replicaCount": 1}})
    assert not [d for d in objects(one) if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == name]
    assert name not in kube.helm_template("default", KAFKA)


def test_stream_feature_processor_without_kafka_feast_or_its_password_fails_with_the_fix() -> None:
    with pytest.raises(AssertionError, match="streamFeatures.enabled needs kafka.enabled"):
        kube.helm("template", "default", kube.WITH_STREAM_FEATURES)
    no_secret = {"streamFeatures": {"enabled": True, "sasl": {"existingSecret": ""}}}
    with pytest.raises(AssertionError, match="needs streamFeatures.sasl.existingSecret"):
        kube.helm("template", "default", KAFKA, no_secret)


def test_with_kafka_the_monitor_reads_the_stream_with_its_own_read_only_user_and_no_transformer_volume() -> None:
    """Issue 15 item 4 on a cluster: MLPLATFORM_MONITOR_KAFKA_* (names checked against MonitorSettings), the password
    from its user's Secret, no prediction-log or label volume (so no ReadWriteMany claim is needed), and a KafkaUser
    that may read predictions and labels in its group only."""
    from mlplatform.events import LABELS, PREDICTIONS
    from mlplatform.monitoring.settings import MonitorSettings

    manifest = kube.helm_template("production", kube.WITH_MODEL, KAFKA)
    summary = kube.kubeconform(manifest)["summary"]
    assert summary["valid"] == len(objects(manifest)) and summary["errors"] == summary["invalid"] == 0
    docs = objects(manifest)
    [deployment] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlplatform-monitor"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    fields = {f"{MonitorSettings.model_config['env_prefix']}{n.upper()}" for n in MonitorSettings.model_fields}
    monitor_env = {k for k in env if k.startswith("MLPLATFORM_MONITOR_")}
    assert monitor_env <= fields, sorted(monitor_env - fields)
    assert env["MLPLATFORM_MONITOR_KAFKA_BOOTSTRAP_SERVERS"] == "events-kafka-bootstrap:9093"
    assert env["MLPLATFORM_MONITOR_KAFKA_SASL_PASSWORD"] == {
        "secretKeyRef": {"name": "mlplatform-monitor", "key": "password"}
    }
    assert "MLPLATFORM_MONITOR_PREDICTION_LOG_DIR" not in env
    assert {v["name"] for v in pod["volumes"]} == {"tmp", "kafka-ca"}
    [user] = [d for d in docs if d["kind"] == "KafkaUser" and d["metadata"]["name"] == "mlplatform-monitor"]
    grants = {
        (a["resource"]["type"], a["resource"].get("name"), op)
        for a in user["spec"]["authorization"]["acls"]
        for op in a["operations"]
    }
    assert grants == {
        ("topic", PREDICTIONS.name, "Read"),
        ("topic", PREDICTIONS.name, "Describe"),
        ("topic", LABELS.name, "Read"),
        ("topic", LABELS.name, "Describe"),
        ("group", "mlplatform-monitor", "Read"),
    }
    # Without Kafka the monitor keeps reading the prediction log's claim.
    plain = objects(kube.helm_template("production", kube.WITH_MODEL))
    [deployment] = [d for d in plain if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlplatform-monitor"]
    assert "prediction-log" in {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
