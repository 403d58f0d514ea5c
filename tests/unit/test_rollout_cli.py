"""`mlplatform rollout status|promote|rollback` against a real (SQLite) MLflow registry and the control file."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlplatform import registry
from mlplatform.cli import app
from mlplatform.rollout.backends import report_root
from mlplatform.rollout.controller import ControlFile
from mlplatform.settings import PlatformSettings

runner = CliRunner()
NAME = "fraud-detector"


@pytest.fixture
def work(mlflow_work_dir: Path) -> Path:
    """A registry with version 1 (champion) and version 2 (challenger)."""
    settings = PlatformSettings(work_dir=mlflow_work_dir)
    registry.configure(settings)
    for _ in range(2):
        registry.register_version(NAME, (mlflow_work_dir / "model").as_uri(), None, {}, [])  # type: ignore[arg-type]
    return mlflow_work_dir


def test_status_shows_the_aliases_and_that_no_rollout_ran(work: Path) -> None:
    result = runner.invoke(app, ["rollout", "status", "--work-dir", str(work)])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["aliases"] == {"champion": "1", "challenger": "2", "previous": None}
    assert status["state"] == "no rollout yet"


def test_record_only_promote_moves_the_aliases_and_tags_the_version(work: Path) -> None:
    result = runner.invoke(app, ["rollout", "promote", "--record-only", "--work-dir", str(work)])
    assert result.exit_code == 0, result.output
    assert registry.get_alias(NAME, "champion").version == "2"
    assert registry.get_alias(NAME, "previous").version == "1"
    assert registry.get_alias(NAME, "challenger") is None
    assert registry.get_version(NAME, "2").tags["rollout.outcome"] == "promoted"


def test_record_only_rollback_retires_the_challenger_and_keeps_the_champion(work: Path) -> None:
    result = runner.invoke(app, ["rollout", "rollback", "--record-only", "--work-dir", str(work)])
    assert result.exit_code == 0, result.output
    assert registry.get_alias(NAME, "champion").version == "1"
    assert registry.get_alias(NAME, "challenger") is None


def test_a_local_decision_without_a_running_rollout_is_refused_clearly(work: Path) -> None:
    result = runner.invoke(app, ["rollout", "promote", "--work-dir", str(work)])
    assert result.exit_code == 2
    assert "no local rollout is running" in result.output and "--record-only" in result.output
    assert registry.get_alias(NAME, "champion").version == "1"  # nothing moved


def test_a_local_decision_goes_to_the_running_controller_through_the_control_file(work: Path) -> None:
    control = ControlFile(report_root(PlatformSettings(work_dir=work)) / "current.json")
    control.publish({"state": "waiting", "canary_version": "2"})

    def controller() -> None:  # stands in for the running controller: acts on the request
        for _ in range(100):
            if control.requested() == "rollback":
                control.publish({"state": "rolled_back", "detail": "rollback requested by a person"})
                return
            time.sleep(0.05)

    thread = threading.Thread(target=controller)
    thread.start()
    result = runner.invoke(app, ["rollout", "rollback", "--work-dir", str(work)])
    thread.join()
    assert result.exit_code == 0, result.output
    assert "rolled_back" in result.output


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["rollout", "start", "--target", "nowhere"], "deploy_target"),
        (["rollout", "start", "--version", "99"], "99"),
        (["rollout", "status", "--target", "moon"], "deploy_target"),
    ],
    ids=["bad-target", "unknown-version", "bad-status-target"],
)
def test_bad_rollout_options_exit_2_naming_what_was_wrong(work: Path, args: list[str], named: str) -> None:
    result = runner.invoke(app, [*args, "--work-dir", str(work)])
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output


def test_run_prints_the_rollout_report_of_the_deploy_step(capsys: pytest.CaptureFixture[str]) -> None:
    """`mlplatform run` (and so `make run`) shows the pipeline's rollout report from its JSON summary."""
    from mlplatform.cli.run import print_deployment
    from mlplatform.rollout.report import RolloutReport, StepRecord

    report = RolloutReport("r1", NAME, "1", "2", "local", "PrometheusEvidence", [10, 100], {}, "t0", outcome="promoted")
    report.steps.append(StepRecord(10, "t0", decision="promote_step", analyses=3))
    print_deployment({"action": "rollout", "outcome": "promoted", "report": json.loads(report.to_json())})
    out = capsys.readouterr().out
    assert "version 2 PROMOTED" in out and "Step 10 %" in out


def test_cluster_status_without_kubernetes_access_says_so(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(work / "no-such-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = runner.invoke(app, ["rollout", "status", "--target", "cluster", "--work-dir", str(work)])
    assert result.exit_code == 2, result.output
    assert "no Kubernetes access" in result.output
