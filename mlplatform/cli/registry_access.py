"""`mlplatform registry-access`: the MLflow registry's users and permissions, and its tracking server's auth file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlplatform.cli.common import console, guarded
from mlplatform.errors import ConfigError
from mlplatform.registry_access import AccessSettings, apply_access, wait_for_server, write_server_config
from mlplatform.settings import PlatformSettings, load_settings

registry_access_app = typer.Typer(
    help="Who may do what in the MLflow registry (docs/adr/0017-registry-access-control.md).", no_args_is_help=True
)


@registry_access_app.command("apply")
@guarded
def registry_access_apply(
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="The tracking server (default: MLPLATFORM_MLFLOW_TRACKING_URI)."),
    ] = None,
) -> None:
    """Create the identities' users and permissions (MLPLATFORM_REGISTRY_ACCESS_*), as the MLflow admin of
    MLFLOW_TRACKING_USERNAME/PASSWORD; running it again changes nothing."""
    settings = load_settings(PlatformSettings, mlflow_tracking_uri=tracking_uri)
    if not settings.tracking_uri.startswith(("http://", "https://")):
        raise ConfigError(
            f"registry access needs a tracking server (http or https), not {settings.tracking_uri}; set "
            "--tracking-uri or MLPLATFORM_MLFLOW_TRACKING_URI"
        )
    access = load_settings(AccessSettings)
    wait_for_server(settings.tracking_uri, access.server_wait_seconds)
    changes = apply_access(
        settings.tracking_uri,
        settings.registered_model_name,
        settings.mlflow_experiment,
        access.identities(),
        settings.artifact_location,
        log=console.print,
    )
    console.print(f"registry access: {len(changes)} change(s)" if changes else "registry access: already as the policy")


@registry_access_app.command("server-config")
@guarded
def registry_access_server_config(
    path: Annotated[Path, typer.Argument(help="The file to write (the server's MLFLOW_AUTH_CONFIG_PATH).")],
) -> None:
    """Write the basic-auth app's configuration: the auth database (MLPLATFORM_REGISTRY_ACCESS_DATABASE_URI) and
    the default permission (MLPLATFORM_REGISTRY_ACCESS_DEFAULT_PERMISSION)."""
    access = load_settings(AccessSettings)
    if access.database_uri is None:
        raise ConfigError(
            "set MLPLATFORM_REGISTRY_ACCESS_DATABASE_URI to the SQLAlchemy URL of the auth database "
            "(on the cluster: the mlflow.auth.database Secret)"
        )
    write_server_config(path, access.database_uri.get_secret_value(), access.default_permission)
    console.print(f"wrote {path} (default permission {access.default_permission})")
