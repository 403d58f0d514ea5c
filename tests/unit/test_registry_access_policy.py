"""Registry access without a server: the policy, the identities' settings, the server's auth file, the report."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mlplatform.errors import ConfigError, MlPlatformError
from mlplatform.registry_access import POLICY, AccessSettings, Role, wait_for_server, write_server_config
from mlplatform.rollout.report import RolloutReport
from mlplatform.settings import load_settings

PASSWORD = "p" * 12


def test_only_the_runner_and_the_approver_may_write_the_model_and_the_others_read() -> None:
    writers = {role for role, grant in POLICY.items() if grant.model != "READ"}
    assert writers == {Role.PIPELINE_RUNNER, Role.APPROVER}
    assert all(POLICY[role].model == "MANAGE" for role in writers)  # removing challenger needs delete
    assert {role: grant.experiment for role, grant in POLICY.items()} == {
        Role.PIPELINE_RUNNER: "EDIT",  # logs runs and rollout reports
        Role.APPROVER: "READ",
        Role.MONITOR: "READ",
        Role.SERVING: "READ",
    }


def test_the_auth_file_keeps_a_percent_escaped_password_and_only_its_owner_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow reads the file with configparser's %-interpolation: an escaped password (%40) must survive."""
    from mlflow.server.auth.config import read_auth_config

    uri = "postgresql+psycopg://mlflow:p%40ss%25word@db:5432/mlflow_auth"
    path = write_server_config(tmp_path / "auth" / "basic_auth.ini", uri)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    config = read_auth_config()
    assert config.database_uri == uri
    assert config.default_permission == "NO_PERMISSIONS"
    assert config.authorization_function == "mlflow.server.auth:authenticate_request_basic_auth"
    assert config.admin_password is None  # the admin comes from MLFLOW_AUTH_ADMIN_*, never from the file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_identities_come_from_the_environment_and_an_unset_one_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPLATFORM_REGISTRY_ACCESS_PIPELINE_RUNNER_USERNAME", "runner")
    monkeypatch.setenv("MLPLATFORM_REGISTRY_ACCESS_PIPELINE_RUNNER_PASSWORD", PASSWORD)
    monkeypatch.setenv("MLPLATFORM_REGISTRY_ACCESS_MONITOR_USERNAME", "monitor")
    monkeypatch.setenv("MLPLATFORM_REGISTRY_ACCESS_MONITOR_PASSWORD", PASSWORD)
    identities = load_settings(AccessSettings).identities()
    assert [(i.role, i.username) for i in identities] == [(Role.PIPELINE_RUNNER, "runner"), (Role.MONITOR, "monitor")]
    assert PASSWORD not in repr(identities)


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"approver_username": "approver"}, "MLPLATFORM_REGISTRY_ACCESS_APPROVER_PASSWORD"),
        ({"monitor_username": "monitor", "monitor_password": "short"}, "shorter than MLflow's 12 characters"),
        (
            {
                "approver_username": "x",
                "approver_password": PASSWORD,
                "monitor_username": "x",
                "monitor_password": PASSWORD,
            },
            "monitor and approver are both MLflow user 'x'",
        ),
    ],
)
def test_an_incomplete_or_shared_identity_is_refused_naming_the_fix(given: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match="invalid AccessSettings") as caught:
        load_settings(AccessSettings, **given)
    assert named in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_the_rollout_report_says_who_moved_the_aliases() -> None:
    report = RolloutReport("r-1", "fraud-detector", "1", "2", "local", "scrape", [10, 100], {}, "2026-12-01T00:00:00")
    report.outcome, report.reason = "promoted", "every check passed"
    report.alias_moves, report.alias_moves_by = ["previous -> 1", "champion -> 2"], "pipeline-runner"
    assert "- registry: previous -> 1, champion -> 2 (by pipeline-runner)\n" in report.to_markdown()
    assert '"alias_moves_by": "pipeline-runner"' in report.to_json()


def test_waiting_for_a_server_that_never_answers_fails_naming_it() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: connection refused
        with pytest.raises(MlPlatformError, match=rf"{url} did not answer /health within 0 s"):
            wait_for_server(url, timeout_seconds=0.2, poll_seconds=0.05)
