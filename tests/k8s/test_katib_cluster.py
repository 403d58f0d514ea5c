"""The Katib Experiment of `mlplatform tune --katib-out` on the real API server (Katib's CRDs installed, no Katib
controller): created and read back as rendered, its trial Job accepted by the server's own validation, and a status
as Katib's controller writes it turned by `mlplatform tune --katib-result` into a tuning run the pipeline can use."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from typer.testing import CliRunner

from mlplatform import registry
from mlplatform.cli import app
from mlplatform.settings import PlatformSettings
from mlplatform.training.katib import PARENT_RUN_ANNOTATION
from mlplatform.training.search_space import default_params
from mlplatform.training.tuning import OBJECTIVE_METRIC, load_best_params
from scripts.kube.sandbox import ControlPlane
from tests.k8s.cluster import api_client, ensure_namespace, install_crds, kubectl
from tests.k8s.test_katib import trial_job

pytestmark = [pytest.mark.k8s, pytest.mark.cluster]

runner = CliRunner()
GROUP, VERSION, PLURAL = "kubeflow.org", "v1beta1", "experiments"


def test_a_rendered_experiment_is_stored_by_the_api_server_and_its_result_feeds_the_next_run(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    install_crds(cluster, "katib")
    namespace = f"tune-{uuid.uuid4().hex[:6]}"
    ensure_namespace(cluster, namespace)
    work, out = tmp_path / "work", tmp_path / "experiment.yaml"
    rendered = runner.invoke(
        app,
        [
            *("tune", "--katib-out", str(out), "--katib-data-dir", "runs/fraud-training-abc12/training-set"),
            *("--katib-namespace", namespace, "--trials", "6", "--seed", "11", "--work-dir", str(work)),
        ],
    )
    assert rendered.exit_code == 0, rendered.output
    body = yaml.safe_load(out.read_text())

    api = client.CustomObjectsApi(api_client(cluster))
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    stored = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body["metadata"]["name"])
    assert stored["spec"] == body["spec"]  # kept as rendered: nothing pruned, nothing defaulted away
    assert stored["metadata"]["annotations"] == body["metadata"]["annotations"]

    # the Job Katib would create for a trial passes the API server's own validation of batch/v1 Jobs
    job = trial_job(body, default_params())
    kubectl(cluster, "create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(job))

    # what Katib's controller writes when the search has finished, through the status subresource
    best = default_params() | {"learning_rate": 0.0051, "depth": 3, "batch_size": 512}
    status = {
        "trialsSucceeded": 6,
        "currentOptimalTrial": {
            "bestTrialName": f"{body['metadata']['name']}-x7k2p9qz",
            "parameterAssignments": [{"name": k, "value": str(v)} for k, v in best.items()],
            "observation": {"metrics": [{"name": OBJECTIVE_METRIC, "max": "0.8312", "latest": "0.8312"}]},
        },
    }
    kubectl(
        cluster,
        *("patch", "experiment", body["metadata"]["name"], "-n", namespace, "--subresource=status"),
        *("--type=merge", "-p", json.dumps({"status": status})),
    )
    finished = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body["metadata"]["name"])
    assert finished["status"]["trialsSucceeded"] == 6
    result_file = tmp_path / "result.yaml"
    result_file.write_text(yaml.safe_dump(finished))

    recorded = runner.invoke(app, ["tune", "--katib-result", str(result_file), "--work-dir", str(work)])
    assert recorded.exit_code == 0, recorded.output
    parent = body["metadata"]["annotations"][PARENT_RUN_ANNOTATION]
    assert f"tuning run id: {parent}" in recorded.output
    registry.configure(PlatformSettings(work_dir=work))
    assert load_best_params(parent) == best  # what the train step of `mlplatform run --tuning-run-id` gets
