"""The whole training pipeline through kfp.local: raw data to a registered, tagged model version."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

from mlplatform import registry
from mlplatform.orchestration.runner import run_local
from mlplatform.params import parse_params
from mlplatform.settings import PlatformSettings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Small data leaves no room for the 30-day warm-up; the feedback-loop test runs the pipeline with it.
PARAMS = {
    "n_transactions": 20_000,
    "n_days": 40,
    "seed": 5,
    "validation_days": 7,
    "test_days": 7,
    "warmup_days": 0,
    "max_epochs": 12,
}


#: This process's environment before the runs (they export settings to their steps only while they run).
ENV_BEFORE: dict[str, str] = {}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("e2e")
    settings = PlatformSettings(work_dir=work)
    ENV_BEFORE.update(os.environ)
    first = run_local(parse_params(PARAMS), settings)
    second = run_local(parse_params(PARAMS), settings)
    return first, second, settings


def test_the_runs_leave_the_platform_settings_of_this_process_environment_as_they_were(two_runs) -> None:
    def platform(env: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in env.items() if k.startswith("MLPLATFORM_")}

    assert platform(dict(os.environ)) == platform(ENV_BEFORE)


def test_first_run_registers_the_champion_with_lineage(two_runs) -> None:
    first, _, settings = two_runs
    assert first.summary["registered"], first.summary["reasons"]
    assert first.summary["version"] == "1"
    assert set(first.summary["aliases"]) == {"champion", "challenger"}
    assert first.summary["test_pr_auc"] >= 1.5 * first.summary["baseline_pr_auc"]
    registry.configure(settings)
    mv = mlflow.MlflowClient().get_model_version("fraud-detector", "1")
    for tag in (
        "data_hash",
        "feature_service",
        "git_commit",
        "pipeline_run_id",
        "component_image",
        "feature_version.customer_stats",
        "feature_version.fraud_model_v1",
    ):
        assert mv.tags.get(tag), tag
    assert mv.tags["feature_service"] == "fraud_model_v1"
    assert len(mv.tags["data_hash"]) == 64
    run = mlflow.get_run(mv.run_id)
    assert run.data.metrics["test_pr_auc"] == pytest.approx(first.summary["test_pr_auc"])
    assert run.data.tags["gate"] == "passed"
    history = mlflow.MlflowClient().get_metric_history(mv.run_id, "val_loss")
    assert len(history) >= 2


def test_model_card_and_artifacts_are_logged(two_runs, tmp_path: Path) -> None:
    first, _, settings = two_runs
    registry.configure(settings)
    version = registry.get_alias("fraud-detector", "champion")
    local = registry.download_version(version, tmp_path)
    assert {"model.safetensors", "model_config.json", "reference_stats.json"} <= {p.name for p in local.iterdir()}
    card = Path(
        mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path="evaluation/model_card.md", dst_path=str(tmp_path)
        )
    )
    text = card.read_text()
    for section in ("## Intended use", "## Data", "## Features", "## Metrics", "## Limits", "rule baseline"):
        assert section in text
    cards = list(first.pipeline_root.glob("*/evaluate/card"))
    assert cards, "the KFP Markdown artifact of the model card is missing"


def test_same_seed_gives_identical_metrics_and_the_second_model_is_canaried_and_promoted(two_runs) -> None:
    first, second, _ = two_runs
    assert second.summary["test_pr_auc"] == first.summary["test_pr_auc"]
    assert second.summary["baseline_pr_auc"] == first.summary["baseline_pr_auc"]
    assert second.summary["champion_pr_auc"] == pytest.approx(first.summary["test_pr_auc"])
    assert second.summary["registered"] and second.summary["aliases"] == ["challenger"]
    # the first run deployed its version as champion; the second canaried an identical model: promoted
    assert first.summary["deployment"]["action"] == "deployed"
    deployment = second.summary["deployment"]
    assert deployment["action"] == "rollout" and deployment["outcome"] == "promoted", deployment["reason"]
    assert [s["percent"] for s in deployment["report"]["steps"]] == [10, 25, 50]
    assert registry.get_alias("fraud-detector", "champion").version == "2"
    assert registry.get_alias("fraud-detector", "previous").version == "1"
    assert registry.get_alias("fraud-detector", "challenger") is None


def test_pipeline_deploy_step_verified_the_champion_and_it_serves_locally(two_runs) -> None:
    """The end of `make run`: the deploy step prepared the champion; served, it scores demo transactions."""
    import httpx

    from mlplatform.deploy.artifact import local_model_dir, resolve
    from mlplatform.local.serving import serve_local
    from mlplatform.local.traffic import demo_transactions

    _, _, settings = two_runs
    champion = resolve(settings, "champion")
    assert (local_model_dir(settings, champion) / "model_config.json").is_file()  # written by the deploy step
    deployed, service = serve_local(settings, "champion")
    with service:
        body = {"instances": demo_transactions(settings)}
        response = httpx.post(service.predict_url, json=body, timeout=10)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["model_version"] == deployed.model_version == champion.version
    assert len(out["predictions"]) == len(body["instances"]) >= 2
    assert all(p["flags"] == [] for p in out["predictions"])  # known customers and merchants
