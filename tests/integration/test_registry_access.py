"""Registry access control against a real `mlflow server --app-name basic-auth` (PostgreSQL backend store and
auth database): the bootstrap, who may register and move aliases, who reads only, and what the refused see."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlplatform import registry
from mlplatform.errors import ConfigError, RegistryAccessDenied
from mlplatform.registry_access import POLICY, Identity, Role, apply_access, write_server_config
from mlplatform.rollout import manual
from mlplatform.rollout.controller import MlflowRecorder
from mlplatform.rollout.report import RolloutReport
from mlplatform.rollout.settings import CanarySettings
from mlplatform.settings import PlatformSettings

pytestmark = pytest.mark.integration

MLFLOW = Path(sys.executable).with_name("mlflow")
STARTUP_TIMEOUT_S = 120.0
MODEL = "fraud-detector"
EXPERIMENT = "fraud-detection"
ADMIN = "mlflow-admin"
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@dataclass
class AuthServer:
    url: str
    admin_password: str
    identities: dict[Role, Identity]
    log: Path

    def identity(self, role: Role) -> Identity:
        return self.identities[role]


@contextmanager
def as_user(username: str | None, password: str | None = None) -> Iterator[None]:
    """MLflow clients of this process authenticate as `username` in the block (None: no credentials)."""
    saved = {k: os.environ.pop(k, None) for k in CREDENTIAL_VARS}
    if username is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = username, password or ""
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


@contextmanager
def as_role(server: AuthServer, role: Role) -> Iterator[None]:
    identity = server.identity(role)
    with as_user(identity.username, identity.password):
        yield


def as_admin(server: AuthServer):
    return as_user(ADMIN, server.admin_password)


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with code {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            response = httpx.get(f"{url}/health", timeout=2.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:  # connection refused while it starts
            last = repr(exc)
        time.sleep(0.25)  # poll interval
    pytest.fail(f"mlflow server at {url} not healthy after {STARTUP_TIMEOUT_S:.0f} s ({last})")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, postgres_databases, port_finder) -> Iterator[AuthServer]:
    """`mlflow server --app-name basic-auth` as the chart runs it: auth file written by `write_server_config`
    (default NO_PERMISSIONS, users in their own PostgreSQL database), admin from the environment."""
    base = tmp_path_factory.mktemp("mlflow-auth")
    backend, users = postgres_databases("mlflow_auth_backend"), postgres_databases("mlflow_auth_users")
    config = write_server_config(base / "basic_auth.ini", users.sqlalchemy_url)
    port, admin_password = port_finder(), secrets.token_urlsafe(18)
    url, log = f"http://127.0.0.1:{port}", base / "server.log"
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARS}
    env |= {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    cmd = [
        str(MLFLOW), "server", "--app-name", "basic-auth",
        "--backend-store-uri", backend.sqlalchemy_url,
        "--artifacts-destination", str(base / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=base, env=env, start_new_session=True)
    try:
        _wait_healthy(url, proc, log)
        identities = {
            role: Identity(role, f"{role.value.replace('_', '-')}", secrets.token_urlsafe(18)) for role in Role
        }
        yield AuthServer(url, admin_password, identities, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _point_mlflow_at_the_server(server: AuthServer) -> Iterator[None]:
    """The registry functions use the mlflow module's tracking URI: point it at the server; restore it and the
    MLFLOW_* variables after."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved_uri, saved_env = utils._tracking_uri, {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    mlflow.set_tracking_uri(server.url)
    yield
    utils.set_tracking_uri(saved_uri)
    for k in [k for k in os.environ if k.startswith("MLFLOW_") and k not in saved_env]:
        del os.environ[k]  # registry.configure sets MLFLOW_HTTP_REQUEST_*
    os.environ.update(saved_env)


@pytest.fixture(scope="module")
def first_changes(server: AuthServer) -> list[str]:
    """The bootstrap's first run, as the admin: what it changed."""
    with as_admin(server):
        return apply_access(server.url, MODEL, EXPERIMENT, list(server.identities.values()), log=lambda _: None)


@pytest.fixture(scope="module")
def experiment_id(first_changes: list[str], server: AuthServer) -> str:
    from mlflow import MlflowClient

    with as_role(server, Role.PIPELINE_RUNNER):
        return MlflowClient().get_experiment_by_name(EXPERIMENT).experiment_id


def _run_with_model(server: AuthServer, experiment_id: str) -> tuple[str, str]:
    """As the pipeline runner: a finished run with a (tiny) model artifact; returns (run id, model source)."""
    from mlflow import MlflowClient

    with as_role(server, Role.PIPELINE_RUNNER):
        client = MlflowClient()
        run = client.create_run(experiment_id)
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "model_config.json").write_text('{"feature_names": []}')
            client.log_artifacts(run.info.run_id, folder, "model")
        client.set_terminated(run.info.run_id)
        return run.info.run_id, f"{run.info.artifact_uri}/model"


def _register_as_runner(server: AuthServer, experiment_id: str) -> registry.RegisteredVersion:
    run_id, source = _run_with_model(server, experiment_id)
    with as_role(server, Role.PIPELINE_RUNNER):
        return registry.register_version(MODEL, source, run_id, {"pipeline_run_id": "test"}, [])


@pytest.fixture(scope="module")
def champion(server: AuthServer, experiment_id: str) -> registry.RegisteredVersion:
    """The first version, registered by the pipeline runner (champion and challenger)."""
    return _register_as_runner(server, experiment_id)


def _registry_state(server: AuthServer) -> dict[str, Any]:
    """Every version of the model with its aliases and tags, read as the admin."""
    from mlflow import MlflowClient

    with as_admin(server):
        client = MlflowClient()
        versions = client.search_model_versions(f"name='{MODEL}'")
        return {
            "aliases": dict(client.get_registered_model(MODEL).aliases),
            "versions": {str(v.version): (sorted(v.aliases), dict(v.tags)) for v in versions},
        }


def _effective(server: AuthServer, identity: Identity, experiment_id: str) -> tuple[str, str]:
    from mlflow.server.auth.client import AuthServiceClient

    with as_admin(server):
        auth = AuthServiceClient(server.url)
        return (
            auth.get_user_permission(identity.username, "registered_model", MODEL).permission,
            auth.get_user_permission(identity.username, "experiment", experiment_id).permission,
        )


def test_bootstrap_creates_every_identity_with_the_policys_permissions(
    server: AuthServer, first_changes: list[str], experiment_id: str
) -> None:
    assert f"created registered model {MODEL!r}" in first_changes
    assert f"created experiment {EXPERIMENT!r}" in first_changes
    for role, identity in server.identities.items():
        assert f"created user {identity.username!r} ({role})" in first_changes
        grant = POLICY[role]
        assert _effective(server, identity, experiment_id) == (grant.model, grant.experiment), role


def test_bootstrap_run_again_through_the_cli_changes_nothing(server: AuthServer, first_changes: list[str]) -> None:
    from typer.testing import CliRunner

    from mlplatform.cli.main import app

    env = {
        "MLFLOW_TRACKING_USERNAME": ADMIN,
        "MLFLOW_TRACKING_PASSWORD": server.admin_password,
        "MLPLATFORM_MLFLOW_TRACKING_URI": server.url,
        "MLPLATFORM_REGISTRY_ACCESS_SERVER_WAIT_SECONDS": "30",
    }
    for identity in server.identities.values():
        prefix = f"MLPLATFORM_REGISTRY_ACCESS_{identity.role.upper()}"
        env |= {f"{prefix}_USERNAME": identity.username, f"{prefix}_PASSWORD": identity.password}
    before = _registry_state(server)
    result = CliRunner().invoke(app, ["registry-access", "apply"], env=env)
    assert result.exit_code == 0, result.output
    assert "already as the policy" in result.output, result.output
    assert _registry_state(server) == before


def test_bootstrap_restores_a_permission_and_a_password_changed_by_hand(
    server: AuthServer, first_changes: list[str], experiment_id: str
) -> None:
    from mlflow.server.auth.client import AuthServiceClient

    monitor, runner = server.identity(Role.MONITOR), server.identity(Role.PIPELINE_RUNNER)
    approver = server.identity(Role.APPROVER)
    with as_admin(server):
        auth = AuthServiceClient(server.url)
        auth.revoke_user_permission(monitor.username, "registered_model", MODEL)
        auth.grant_user_permission(monitor.username, "registered_model", MODEL, "MANAGE")
        auth.update_user_password(runner.username, secrets.token_urlsafe(18))
        auth.update_user_admin(approver.username, True)
        changes = apply_access(server.url, MODEL, EXPERIMENT, list(server.identities.values()), log=lambda _: None)
        assert not auth.get_user(approver.username).is_admin
    assert changes == [
        f"reset the password of user {runner.username!r} (pipeline_runner) to its Secret's",
        f"user {approver.username!r} (approver) is no longer an admin",
        f"user {monitor.username!r} (monitor) on model {MODEL!r}: MANAGE -> READ",
    ]
    assert _effective(server, monitor, experiment_id) == ("READ", "READ")
    with as_role(server, Role.PIPELINE_RUNNER):
        assert registry.get_alias(MODEL, "no-such-alias") is None  # the runner's password works again


def test_bootstrap_refuses_a_non_admin_and_an_identity_that_is_the_admin(
    server: AuthServer, first_changes: list[str]
) -> None:
    others = [i for role, i in server.identities.items() if role != Role.PIPELINE_RUNNER]
    with (
        as_role(server, Role.PIPELINE_RUNNER),
        pytest.raises(ConfigError, match="'pipeline-runner' .* is not an admin"),
    ):
        apply_access(server.url, MODEL, EXPERIMENT, others, log=lambda _: None)
    with as_admin(server), pytest.raises(ConfigError, match="the monitor identity is the MLflow admin"):
        apply_access(server.url, MODEL, EXPERIMENT, [Identity(Role.MONITOR, ADMIN, "x" * 12)], log=lambda _: None)


def test_runner_registers_a_version_and_the_alias_tags_name_the_runner(
    server: AuthServer, champion: registry.RegisteredVersion
) -> None:
    runner = server.identity(Role.PIPELINE_RUNNER).username
    assert champion.version == "1" and set(champion.aliases) == {"champion", "challenger"}
    with as_role(server, Role.MONITOR):
        tags = registry.get_alias(MODEL, "champion").tags
    for alias in ("champion", "challenger"):
        assert tags[f"mlplatform.alias.{alias}.moved_by"] == runner
        assert datetime.fromisoformat(tags[f"mlplatform.alias.{alias}.moved_at"]).tzinfo is not None


def test_approver_promotes_by_hand_and_the_tags_and_the_log_name_the_approver(
    server: AuthServer, champion: registry.RegisteredVersion, experiment_id: str, tmp_path: Path
) -> None:
    """`mlplatform rollout promote --record-only --version N` as the approver: the aliases move, recorded."""
    challenger = _register_as_runner(server, experiment_id)
    approver = server.identity(Role.APPROVER).username
    settings = PlatformSettings(work_dir=tmp_path, mlflow_tracking_uri=server.url)
    lines: list[str] = []
    with as_role(server, Role.APPROVER):
        manual.decide("promote", settings, CanarySettings(), challenger.version, record_only=True, log=lines.append)
    assert lines == [
        f"version {challenger.version}: promote done; registry: previous -> {champion.version}, "
        f"champion -> {challenger.version}, challenger removed (by {approver})"
    ]
    state = _registry_state(server)
    assert state["aliases"] == {"champion": challenger.version, "previous": champion.version}
    promoted_tags = state["versions"][challenger.version][1]
    assert promoted_tags["mlplatform.alias.champion.moved_by"] == approver
    assert promoted_tags["mlplatform.alias.challenger.moved_by"] == server.identity(Role.PIPELINE_RUNNER).username
    assert promoted_tags["mlplatform.alias.challenger.removed_by"] == approver
    assert state["versions"][champion.version][1]["mlplatform.alias.previous.moved_by"] == approver


def test_the_rollout_report_names_who_moved_the_aliases(
    server: AuthServer, champion: registry.RegisteredVersion, experiment_id: str, tmp_path: Path
) -> None:
    """The rollout controller (the pipeline runner on a cluster) records a promotion: the report says who."""
    from mlflow import MlflowClient

    challenger = _register_as_runner(server, experiment_id)
    runner = server.identity(Role.PIPELINE_RUNNER).username
    with as_role(server, Role.PIPELINE_RUNNER):
        stable = registry.get_alias(MODEL, "champion").version
        report = RolloutReport(
            "r-1", MODEL, stable, challenger.version, "cluster", "prometheus", [10, 100], {}, "2026-12-01T00:00:00"
        )
        report.outcome, report.reason = "promoted", "every check passed"
        report.write(tmp_path)
        moves = MlflowRecorder(MODEL).record(report, tmp_path)
        saved = Path(
            MlflowClient().download_artifacts(challenger.run_id, "rollouts/r-1/report.json", str(tmp_path / "dl"))
        )
    assert moves == [f"previous -> {stable}", f"champion -> {challenger.version}", "challenger removed"]
    assert report.alias_moves_by == runner
    assert f"- registry: {', '.join(moves)} (by {runner})" in report.to_markdown()
    assert json.loads(saved.read_text())["alias_moves_by"] == runner  # the copy attached to the run says it too
    assert _registry_state(server)["versions"][challenger.version][1]["mlplatform.alias.champion.moved_by"] == runner


@pytest.mark.parametrize("role", [Role.MONITOR, Role.SERVING])
def test_read_only_identities_read_but_every_write_is_refused_with_403_and_nothing_changes(
    server: AuthServer, champion: registry.RegisteredVersion, experiment_id: str, role: Role, tmp_path: Path
) -> None:
    challenger = _register_as_runner(server, experiment_id)  # a challenger to try to promote or retire
    run_id, source = _run_with_model(server, experiment_id)
    user = server.identity(role).username
    before = _registry_state(server)
    with as_role(server, role):
        assert registry.get_alias(MODEL, "challenger").version == challenger.version
        downloaded = registry.download_version(registry.get_version(MODEL, challenger.version), tmp_path / "dl")
        assert (downloaded / "model_config.json").is_file()
        refused = {
            "register a version of model 'fraud-detector'": lambda: registry.register_version(
                MODEL, source, run_id, {}, []
            ),
            "move alias 'previous' of model 'fraud-detector'": lambda: registry.promote_champion(
                MODEL, challenger.version
            ),
            "remove alias 'challenger' of model 'fraud-detector'": lambda: registry.retire_challenger(
                MODEL, challenger.version
            ),
            f"tag version {challenger.version} of model 'fraud-detector'": lambda: registry.tag_version(
                MODEL, challenger.version, {"rollout.outcome": "promoted"}
            ),
        }
        for action, attempt in refused.items():
            with pytest.raises(RegistryAccessDenied) as caught:
                attempt()
            message = str(caught.value)
            assert caught.value.status == 403, message
            assert action in message and f"for user {user!r}" in message and "HTTP 403" in message, message
            assert "pipeline runner and the approver" in message, message
    assert _registry_state(server) == before


def test_an_authenticated_user_outside_the_policy_may_not_even_read(
    server: AuthServer, champion: registry.RegisteredVersion
) -> None:
    from mlflow.server.auth.client import AuthServiceClient

    password = secrets.token_urlsafe(18)
    with as_admin(server):
        AuthServiceClient(server.url).create_user("stranger", password)
    with as_user("stranger", password), pytest.raises(RegistryAccessDenied) as caught:
        registry.get_alias(MODEL, "champion")
    assert caught.value.status == 403
    assert "read alias 'champion' of model 'fraud-detector' for user 'stranger'" in str(caught.value)


def test_anonymous_and_wrong_password_requests_are_refused_with_401(
    server: AuthServer, champion: registry.RegisteredVersion
) -> None:
    before = _registry_state(server)
    response = httpx.post(
        f"{server.url}/api/2.0/mlflow/registered-models/alias",
        json={"name": MODEL, "alias": "champion", "version": champion.version},
        timeout=10.0,
    )
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Basic")
    with as_user(None), pytest.raises(RegistryAccessDenied) as anonymous:
        registry.get_alias(MODEL, "champion")
    assert anonymous.value.status == 401
    assert "not authenticated (HTTP 401: the request carried no credentials)" in str(anonymous.value)
    assert "MLFLOW_TRACKING_USERNAME" in str(anonymous.value)
    runner = server.identity(Role.PIPELINE_RUNNER).username
    with as_user(runner, "not-the-password"), pytest.raises(RegistryAccessDenied) as wrong:
        registry.promote_champion(MODEL, champion.version)
    assert wrong.value.status == 401
    assert "the password of user 'pipeline-runner' is wrong" in str(wrong.value)
    assert _registry_state(server) == before
