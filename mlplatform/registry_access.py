"""Who may do what in the MLflow registry: the identities, the server's auth configuration, the idempotent bootstrap."""

from __future__ import annotations

import configparser
import copy
import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlplatform.errors import ConfigError, MlPlatformError
from mlplatform.registry import access

#: The decision record: why MLflow's basic-auth app, and why these permissions.
RECORD = "docs/adr/0017-registry-access-control.md"
#: MLflow's shortest accepted password (mlflow.utils.validation._validate_password).
MIN_PASSWORD_LENGTH = 12
#: What an authenticated user may do with a model or an experiment nobody granted them: nothing.
DEFAULT_PERMISSION = "NO_PERMISSIONS"
#: The basic-auth app's check of each request: HTTP basic credentials against its user database.
AUTHORIZATION_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"


class Role(enum.StrEnum):
    """The identities of the registry (each one MLflow user)."""

    PIPELINE_RUNNER = "pipeline_runner"
    APPROVER = "approver"
    MONITOR = "monitor"
    SERVING = "serving"


@dataclass(frozen=True)
class Grant:
    """What a role may do: its MLflow permission on the registered model and on the experiment, and what for.

    MLflow's levels: READ (read), EDIT (read, write), MANAGE (read, write, delete, grant). Deleting an alias or a
    version needs MANAGE: no level between EDIT and MANAGE may delete.
    """

    model: str
    experiment: str
    purpose: str


#: The policy (docs/adr/0017-registry-access-control.md). Anyone else: NO_PERMISSIONS; anonymous: HTTP 401.
POLICY: dict[Role, Grant] = {
    Role.PIPELINE_RUNNER: Grant(
        "MANAGE",
        "EDIT",
        "registers versions, moves aliases (challenger, champion, previous) and removes challenger, deletes "
        "abandoned registrations; logs the runs and the rollout reports",
    ),
    Role.APPROVER: Grant(
        "MANAGE",
        "READ",
        "promotes or rolls back by hand (`mlplatform rollout promote|rollback`): moves champion and previous, "
        "removes challenger, tags the version",
    ),
    Role.MONITOR: Grant("READ", "READ", "reads versions and downloads their reference statistics"),
    Role.SERVING: Grant("READ", "READ", "resolves aliases and downloads a version's artifact"),
}


@dataclass(frozen=True)
class Identity:
    """One MLflow user that plays a role."""

    role: Role
    username: str
    password: str = field(repr=False)


class AccessSettings(BaseSettings):
    """Credentials of the registry's identities and of its auth database (on the cluster: from Secrets).

    Each field is read from the environment variable `MLPLATFORM_REGISTRY_ACCESS_<FIELD NAME>`. An identity
    whose username is unset is not created. `apply` runs as the MLflow admin of MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD; `server-config` needs only `database_uri`.
    """

    model_config = SettingsConfigDict(env_prefix="MLPLATFORM_REGISTRY_ACCESS_", extra="forbid")

    pipeline_runner_username: str | None = Field(
        default=None, description="MLflow user of the pipeline runner: registers versions, moves aliases."
    )
    pipeline_runner_password: SecretStr | None = Field(default=None, description="Its password (12 characters+).")
    approver_username: str | None = Field(
        default=None, description="MLflow user of the approver: promotes or rolls back by hand."
    )
    approver_password: SecretStr | None = Field(default=None, description="Its password (12 characters+).")
    monitor_username: str | None = Field(default=None, description="MLflow user of the drift monitor: reads.")
    monitor_password: SecretStr | None = Field(default=None, description="Its password (12 characters+).")
    serving_username: str | None = Field(default=None, description="MLflow user of the serving side: reads.")
    serving_password: SecretStr | None = Field(default=None, description="Its password (12 characters+).")
    database_uri: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the tracking server's auth database (users and permissions), for "
        "`server-config`.",
    )
    default_permission: Literal["NO_PERMISSIONS", "READ"] = Field(
        default=DEFAULT_PERMISSION,
        description="`server-config`: what an authenticated user may do where nobody granted them anything.",
    )
    server_wait_seconds: float = Field(
        default=300.0, gt=0, description="How long `apply` waits for the tracking server to answer /health."
    )

    @model_validator(mode="after")
    def _complete(self) -> AccessSettings:
        names: dict[str, Role] = {}
        for role in Role:
            user, password = getattr(self, f"{role}_username"), getattr(self, f"{role}_password")
            variable = f"MLPLATFORM_REGISTRY_ACCESS_{role.upper()}"
            if bool(user) != bool(password):
                raise ValueError(f"set both {variable}_USERNAME and {variable}_PASSWORD, or neither")
            if not user:
                continue
            if len(password.get_secret_value()) < MIN_PASSWORD_LENGTH:
                raise ValueError(f"{variable}_PASSWORD is shorter than MLflow's {MIN_PASSWORD_LENGTH} characters")
            if user in names:
                raise ValueError(
                    f"{role} and {names[user]} are both MLflow user {user!r}: each role needs its own user, or the "
                    "read-only one would get the other's write permissions"
                )
            names[user] = role
        return self

    def identities(self) -> list[Identity]:
        """The identities whose username is set, in the order of `Role`."""
        found = []
        for role in Role:
            user, password = getattr(self, f"{role}_username"), getattr(self, f"{role}_password")
            if user and password is not None:
                found.append(Identity(role, user, password.get_secret_value()))
        return found


def write_server_config(path: Path, database_uri: str, default_permission: str = DEFAULT_PERMISSION) -> Path:
    """Write the basic-auth app's configuration (the file MLFLOW_AUTH_CONFIG_PATH names), readable by its owner only.

    The admin's credentials are not in it: the server reads them from MLFLOW_AUTH_ADMIN_USERNAME and
    MLFLOW_AUTH_ADMIN_PASSWORD (the first start creates the admin user).

    Args:
        path: The file to write.
        database_uri: SQLAlchemy URL of the auth database; a `%` in it (an escaped password) is kept as is.
        default_permission: What an authenticated user may do where nobody granted them anything.
    """
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": default_permission,
        # MLflow reads the file with configparser's %-interpolation: %% is a literal %
        "database_uri": database_uri.replace("%", "%%"),
        "authorization_function": AUTHORIZATION_FUNCTION,
        "grant_default_workspace_access": "false",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        config.write(out)
    return path


def _host(tracking_uri: str, username: str | None = None, password: str | None = None) -> Any:
    """MLflow's connection settings for `tracking_uri` (TLS from MLFLOW_TRACKING_*), as `username` when given."""
    from mlflow.utils.credentials import get_default_host_creds

    creds = copy.copy(get_default_host_creds(tracking_uri))
    if username is not None:
        creds.username, creds.password = username, password
    return creds


def wait_for_server(tracking_uri: str, timeout_seconds: float, poll_seconds: float = 1.0) -> None:
    """Return once the tracking server answers GET /health with 200.

    Raises:
        MlPlatformError: It did not within `timeout_seconds`, with the last answer.
    """
    from mlflow.utils.rest_utils import http_request

    deadline = time.monotonic() + timeout_seconds
    last = "no answer"
    while True:
        try:
            response = http_request(_host(tracking_uri), "/health", "GET", max_retries=0, timeout=5)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except Exception as exc:  # noqa: BLE001 - connection refused while it starts, DNS not there yet
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise MlPlatformError(
                f"the MLflow tracking server at {tracking_uri} did not answer /health within {timeout_seconds:.0f} s "
                f"({last}); is it running?"
            )
        time.sleep(poll_seconds)


def _error_code(exc: Exception) -> str | None:
    return getattr(exc, "error_code", None)


def _password_works(tracking_uri: str, identity: Identity) -> bool:
    """Whether the server accepts the identity's password (a user may always read itself)."""
    from mlflow.server.auth.routes import GET_USER
    from mlflow.utils.rest_utils import http_request

    response = http_request(
        _host(tracking_uri, identity.username, identity.password),
        GET_USER,
        "GET",
        params={"username": identity.username},
        max_retries=0,
        timeout=30,
        raise_on_status=False,
    )
    if response.status_code not in (200, 401):
        raise MlPlatformError(
            f"MLflow answered HTTP {response.status_code} to user {identity.username!r} reading itself: "
            f"{response.text[:200]}"
        )
    return response.status_code == 200


def apply_access(
    tracking_uri: str,
    model_name: str,
    experiment_name: str,
    identities: list[Identity],
    artifact_location: str | None = None,
    log: Callable[[str], Any] = print,
) -> list[str]:
    """Make the registry's users and permissions what `POLICY` says, as the MLflow admin; idempotent.

    Creates the registered model and the experiment when missing (so that no read-only identity can create and
    own them first), each identity's user (or resets its password when the server no longer accepts it), and
    sets each identity's permission on the model and the experiment; a permission that differs (changed by
    hand, or the creator's MANAGE) is replaced. Runs with the admin credentials of MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD.

    Args:
        tracking_uri: The tracking server (http or https).
        model_name: The registered model the policy is about.
        experiment_name: The experiment its runs are logged in.
        identities: The users to create and grant.
        artifact_location: Artifact root of the experiment when it is created (None: the server's store).
        log: One line per change.

    Returns:
        The changes made; empty when everything already was as the policy says.

    Raises:
        ConfigError: MLFLOW_TRACKING_USERNAME is not an MLflow admin, or an identity is the admin.
        RegistryAccessDenied: The server refused the admin's credentials.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    admin = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if not admin:
        raise ConfigError(
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to the MLflow admin's credentials (on the "
            "cluster: the mlflow.auth.admin Secret): only an admin may create users and grant permissions"
        )
    for identity in identities:
        if identity.username == admin:
            raise ConfigError(
                f"the {identity.role} identity is the MLflow admin {admin!r}; an admin bypasses every permission, "
                f"so give the {identity.role} a user of its own ({RECORD})"
            )
    auth, client = AuthServiceClient(tracking_uri), MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    changes: list[str] = []

    def changed(line: str) -> None:
        changes.append(line)
        log(line)

    with access(f"bootstrap the registry's identities as admin {admin!r}"):
        if not auth.get_user(admin).is_admin:
            raise ConfigError(
                f"MLflow user {admin!r} (MLFLOW_TRACKING_USERNAME) is not an admin: run this with the admin's "
                "credentials (the mlflow.auth.admin Secret)"
            )
        try:
            client.create_registered_model(model_name)
            changed(f"created registered model {model_name!r}")
        except MlflowException as exc:
            if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            experiment_id = client.create_experiment(experiment_name, artifact_location=artifact_location)
            changed(f"created experiment {experiment_name!r}")
        else:
            experiment_id = experiment.experiment_id
        for identity in identities:
            _apply_identity(auth, tracking_uri, identity, model_name, experiment_name, experiment_id, changed)
    return changes


def _apply_identity(
    auth: Any,
    tracking_uri: str,
    identity: Identity,
    model_name: str,
    experiment_name: str,
    experiment_id: str,
    changed: Callable[[str], None],
) -> None:
    from mlflow.exceptions import MlflowException

    user = identity.username
    try:
        existing = auth.get_user(user)
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
        existing = None
    if existing is None:
        auth.create_user(user, identity.password)
        changed(f"created user {user!r} ({identity.role})")
    else:
        if existing.is_admin:
            auth.update_user_admin(user, False)
            changed(f"user {user!r} ({identity.role}) is no longer an admin")
        if not _password_works(tracking_uri, identity):
            auth.update_user_password(user, identity.password)
            changed(f"reset the password of user {user!r} ({identity.role}) to its Secret's")
    grant = POLICY[identity.role]
    for resource_type, resource_id, label, wanted in (
        ("registered_model", model_name, f"model {model_name!r}", grant.model),
        ("experiment", experiment_id, f"experiment {experiment_name!r}", grant.experiment),
    ):
        current = auth.get_user_permission(user, resource_type, resource_id).permission
        if current == wanted:
            continue
        try:
            auth.grant_user_permission(user, resource_type, resource_id, wanted)
        except MlflowException as exc:  # a different grant exists: replace it
            if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
            auth.revoke_user_permission(user, resource_type, resource_id)
            auth.grant_user_permission(user, resource_type, resource_id, wanted)
        changed(f"user {user!r} ({identity.role}) on {label}: {current} -> {wanted}")
