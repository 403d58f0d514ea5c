"""Deploy targets: one factory picks the behaviour of MLPLATFORM_DEPLOY_TARGET."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlplatform.errors import MlPlatformError
from mlplatform.registry import RegisteredVersion
from mlplatform.rollout.settings import LOCAL_PROFILE, CanarySettings
from mlplatform.rollout.targets import ClusterTarget, LocalTarget, target_for
from mlplatform.settings import PlatformSettings


def _version(v: str) -> RegisteredVersion:
    return RegisteredVersion("fraud-detector", v, f"file:///m/{v}", f"run{v}", [], {})


def test_the_deploy_target_of_the_settings_picks_the_target(tmp_path: Path) -> None:
    local = target_for(PlatformSettings(work_dir=tmp_path))
    cluster = target_for(PlatformSettings(work_dir=tmp_path, deploy_target="cluster"))
    assert isinstance(local, LocalTarget) and local.in_process
    assert isinstance(cluster, ClusterTarget) and not cluster.in_process


def test_local_rollouts_use_the_local_profile_where_the_environment_sets_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLPLATFORM_CANARY_MIN_REQUESTS", "7")
    local = target_for(PlatformSettings(work_dir=tmp_path)).canary_settings()
    cluster = target_for(PlatformSettings(work_dir=tmp_path, deploy_target="cluster")).canary_settings()
    assert local.min_requests == 7 == cluster.min_requests  # the environment wins everywhere
    assert local.step_window_seconds == LOCAL_PROFILE["step_window_seconds"]
    assert cluster.step_window_seconds == CanarySettings.model_fields["step_window_seconds"].default


def test_without_a_running_local_rollout_traffic_moves_only_in_the_registry(tmp_path: Path) -> None:
    target = target_for(PlatformSettings(work_dir=tmp_path))
    canary = CanarySettings()
    assert target.traffic() == {"state": "no rollout yet"}
    assert target.request("promote", canary, print) is False
    with pytest.raises(MlPlatformError, match="--record-only"):
        target.move_traffic("promote", canary, _version("1"), _version("2"))


def test_a_local_run_exports_settings_to_its_steps_only_while_it_lasts(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlplatform.orchestration.runner import _exported

    monkeypatch.setenv("MLPLATFORM_WORK_DIR", "/before")
    monkeypatch.delenv("MLPLATFORM_CANARY_STEP_WINDOW_SECONDS", raising=False)
    with _exported({"MLPLATFORM_WORK_DIR": "/run", "MLPLATFORM_CANARY_STEP_WINDOW_SECONDS": "5"}):
        assert os.environ["MLPLATFORM_WORK_DIR"] == "/run"
        assert os.environ["MLPLATFORM_CANARY_STEP_WINDOW_SECONDS"] == "5"
    assert os.environ["MLPLATFORM_WORK_DIR"] == "/before"
    assert "MLPLATFORM_CANARY_STEP_WINDOW_SECONDS" not in os.environ
