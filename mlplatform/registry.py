"""MLflow access: tracking URI, experiment, and the registry operations of the promotion gate."""

from __future__ import annotations

import getpass
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlplatform.errors import ConfigError, PromotionRejected, RegistryAccessDenied
from mlplatform.settings import PlatformSettings

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"

#: Model-version tags that record an alias move onto the version: who moved it (`acting_identity`) and when
#: (UTC, ISO 8601); `{alias}` is champion, challenger or previous. They stay when the alias moves on (history).
ALIAS_MOVED_BY_TAG = "mlplatform.alias.{alias}.moved_by"
ALIAS_MOVED_AT_TAG = "mlplatform.alias.{alias}.moved_at"
#: Likewise when an alias is removed from the version (`challenger` after a promotion or a rollback).
ALIAS_REMOVED_BY_TAG = "mlplatform.alias.{alias}.removed_by"
ALIAS_REMOVED_AT_TAG = "mlplatform.alias.{alias}.removed_at"
#: Where the identities and their permissions are decided.
ACCESS_RECORD = "docs/adr/0017-registry-access-control.md"


def acting_identity() -> str:
    """Who this process writes to the registry as: the MLflow user (MLFLOW_TRACKING_USERNAME), or `os:<login>`
    where no MLflow credentials are set (a store without authentication, such as the local SQLite one)."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user:
        return user
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):  # a container user without a passwd entry
        return "os:unknown"


@contextmanager
def access(action: str) -> Iterator[None]:
    """Turn the tracking server's refusals (401, 403) inside the block into a `RegistryAccessDenied` naming who
    was refused `action` (e.g. "move alias 'champion' of model 'fraud-detector' to version 3") and the fix.

    Raises:
        RegistryAccessDenied: The server refused a request of the block.
    """
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code == "UNAUTHENTICATED":
            user = os.environ.get("MLFLOW_TRACKING_USERNAME")
            why = f"the password of user {user!r} is wrong" if user else "the request carried no credentials"
            raise RegistryAccessDenied(
                f"MLflow refused to {action}: not authenticated (HTTP 401: {why}). Set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to an identity of the registry (on the cluster they come from that "
                f"identity's Secret; {ACCESS_RECORD})",
                401,
            ) from exc
        if exc.error_code == "PERMISSION_DENIED":
            raise RegistryAccessDenied(
                f"MLflow refused to {action} for user {acting_identity()!r} (HTTP 403 permission denied): only the "
                "pipeline runner and the approver identities may register versions and move aliases, the monitor "
                f"and serving identities may read, anyone else nothing ({ACCESS_RECORD}). Use the identity meant "
                "for this, or have an MLflow admin run `mlplatform registry-access apply` if its permissions are "
                "missing",
                403,
            ) from exc
        raise


def configure(settings: PlatformSettings) -> str:
    """Point MLflow at the configured tracking server, with the configured timeout and retries.

    Returns:
        The experiment id (the experiment is created with the configured artifact root if missing).
    """
    import mlflow

    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(settings.mlflow_request_timeout_seconds)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.mlflow_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    if settings.tracking_uri.startswith("sqlite:"):
        settings.resolved_work_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    with access(f"open experiment {settings.mlflow_experiment!r} in {settings.tracking_uri}"):
        exp = mlflow.get_experiment_by_name(settings.mlflow_experiment)
        if exp is not None:
            return exp.experiment_id
        return mlflow.create_experiment(settings.mlflow_experiment, artifact_location=settings.artifact_location)


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version in the registry."""

    name: str
    version: str
    source: str
    run_id: str | None
    aliases: list[str]
    tags: dict[str, str]


def get_alias(name: str, alias: str) -> RegisteredVersion | None:
    """The version behind `models:/<name>@<alias>`, or None when the model or alias does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        with access(f"read alias {alias!r} of model {name!r}"):
            mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return RegisteredVersion(mv.name, str(mv.version), mv.source, mv.run_id, list(mv.aliases), dict(mv.tags))


def download_version(version: RegisteredVersion, dst: Path | None = None) -> Path:
    """Download a version's artifact directory; returns the local directory."""
    import mlflow

    dst = dst or Path(tempfile.mkdtemp(prefix=f"{version.name}-v{version.version}-"))
    with access(f"download version {version.version} of model {version.name!r}"):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dst)))


def gate_reasons(
    metrics: Mapping[str, float],
    baseline_pr_auc: float,
    champion_pr_auc: float | None,
    settings: PlatformSettings,
) -> list[str]:
    """Why a model fails the promotion gate (empty when it passes).

    Args:
        metrics: The candidate's test metrics (`roc_auc`, `pr_auc`).
        baseline_pr_auc: The rule baseline's PR-AUC on the same test set.
        champion_pr_auc: The champion's PR-AUC on the same test set, None when there is none.
        settings: The gate thresholds.
    """
    reasons = []
    roc, pr = metrics.get("roc_auc", float("nan")), metrics.get("pr_auc", float("nan"))
    if not roc >= settings.gate_min_roc_auc:
        reasons.append(f"test ROC-AUC {roc:.4f} is below the minimum {settings.gate_min_roc_auc}")
    if not pr >= settings.gate_min_pr_auc:
        reasons.append(f"test PR-AUC {pr:.4f} is below the minimum {settings.gate_min_pr_auc}")
    needed = settings.gate_min_baseline_ratio * baseline_pr_auc
    if not pr >= needed:
        reasons.append(
            f"test PR-AUC {pr:.4f} does not beat the rule baseline ({baseline_pr_auc:.4f} x "
            f"{settings.gate_min_baseline_ratio} = {needed:.4f})"
        )
    if champion_pr_auc is not None and not pr >= champion_pr_auc - settings.gate_max_regression:
        reasons.append(
            f"test PR-AUC {pr:.4f} regresses against the champion's {champion_pr_auc:.4f} by more "
            f"than {settings.gate_max_regression}"
        )
    return reasons


#: Tag of a version while its registration is in progress; removed once its aliases are set.
REGISTRATION_PENDING_TAG = "registration_pending"
#: A registration pending for longer than this was abandoned (the registry failed mid-way and stayed down).
ABANDONED_AFTER_SECONDS = 600.0


def register_version(
    name: str,
    source: str,
    run_id: str,
    tags: Mapping[str, Any],
    reasons: list[str],
    abandoned_after_seconds: float = ABANDONED_AFTER_SECONDS,
) -> RegisteredVersion:
    """Register a gated model version with its lineage tags and move the aliases.

    The version gets alias `challenger`; the first version of a model also becomes `champion`.
    Nothing is written when `reasons` is not empty. The version is created tagged
    `registration_pending` and the tag is removed once its aliases are set. When a registry write
    fails after the version was created, the version is deleted again; when the registry is down for
    that delete too, the pending version stays (no alias points at it, so nothing serves it) and the
    next registration of the model removes it (`remove_abandoned_registrations`). Each alias move is
    recorded on the version (`ALIAS_MOVED_BY_TAG`, `ALIAS_MOVED_AT_TAG`).

    Raises:
        PromotionRejected: When the gate rejected the model (`reasons` not empty).
        RegistryAccessDenied: When the tracking server refused this identity (only the pipeline runner and the
            approver may register; nothing was written then).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if reasons:
        raise PromotionRejected(reasons)
    client = MlflowClient()
    str_tags = {k: str(v) for k, v in tags.items()}
    with access(f"register a version of model {name!r}"):
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        remove_abandoned_registrations(name, abandoned_after_seconds)
        had_champion = get_alias(name, CHAMPION) is not None
        mv = client.create_model_version(
            name, source=source, run_id=run_id, tags={**str_tags, REGISTRATION_PENDING_TAG: "true"}
        )
    try:
        _move_alias(client, name, CHALLENGER, str(mv.version))
        if not had_champion:
            _move_alias(client, name, CHAMPION, str(mv.version))
        with access(f"register version {mv.version} of model {name!r}"):
            client.delete_model_version_tag(name, mv.version, REGISTRATION_PENDING_TAG)
    except Exception:
        with access(f"delete the half-registered version {mv.version} of model {name!r}"):
            client.delete_model_version(name, mv.version)  # when this fails too, the next registration cleans up
        raise
    aliases = [CHALLENGER] + ([] if had_champion else [CHAMPION])
    return RegisteredVersion(name, str(mv.version), source, run_id, aliases, str_tags)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _move_alias(client: Any, name: str, alias: str, version: str) -> None:
    """Point `alias` at `version` and record on the version who moved it and when."""
    with access(f"move alias {alias!r} of model {name!r} to version {version}"):
        client.set_registered_model_alias(name, alias, version)
        client.set_model_version_tag(name, version, ALIAS_MOVED_BY_TAG.format(alias=alias), acting_identity())
        client.set_model_version_tag(name, version, ALIAS_MOVED_AT_TAG.format(alias=alias), _now_iso())


def _remove_alias(client: Any, name: str, alias: str, version: str) -> None:
    """Remove `alias` (it points at `version`) and record on the version who removed it and when."""
    with access(f"remove alias {alias!r} of model {name!r} from version {version}"):
        client.delete_registered_model_alias(name, alias)
        client.set_model_version_tag(name, version, ALIAS_REMOVED_BY_TAG.format(alias=alias), acting_identity())
        client.set_model_version_tag(name, version, ALIAS_REMOVED_AT_TAG.format(alias=alias), _now_iso())


def remove_abandoned_registrations(name: str, older_than_seconds: float = ABANDONED_AFTER_SECONDS) -> list[str]:
    """Delete the versions of `name` whose registration was left pending longer than `older_than_seconds` ago
    (a registry outage between creating a version and setting its aliases); returns their numbers.

    A younger pending version may be another run registering right now and is left alone. A pending version
    that carries an alias got its aliases and only lost the tag removal: it may be serving, so it is kept and
    its tag removed.
    """
    import time

    from mlflow import MlflowClient

    client = MlflowClient()
    with access(f"remove abandoned registrations of model {name!r}"):
        found = client.search_model_versions(f"name='{name}' and tags.{REGISTRATION_PENDING_TAG} = 'true'")
        now_ms = time.time() * 1000.0
        removed = []
        for mv in found:
            if now_ms - float(mv.creation_timestamp or 0) < older_than_seconds * 1000.0:
                continue
            if client.get_model_version(name, mv.version).aliases:
                client.delete_model_version_tag(name, mv.version, REGISTRATION_PENDING_TAG)
                continue
            client.delete_model_version(name, mv.version)
            removed.append(str(mv.version))
    return removed


def get_version(name: str, version: str) -> RegisteredVersion:
    """One model version by number.

    Raises:
        ConfigError: When it does not exist.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        with access(f"read version {version} of model {name!r}"):
            mv = MlflowClient().get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ConfigError(f"model {name!r} has no version {version!r}: {exc.message}") from exc
        raise
    return RegisteredVersion(mv.name, str(mv.version), mv.source, mv.run_id, list(mv.aliases), dict(mv.tags))


def promote_champion(name: str, version: str) -> list[str]:
    """Make `version` the champion after a successful rollout: the old champion becomes `previous`.

    The `challenger` alias is removed when it pointed at `version` (it is no longer challenging). Each move is
    recorded on the version it concerns (who, when: `ALIAS_MOVED_BY_TAG`, `ALIAS_REMOVED_BY_TAG`).

    Returns:
        The alias moves done, for the record (e.g. "previous -> 1", "champion -> 2").

    Raises:
        RegistryAccessDenied: When the tracking server refused this identity (only the pipeline runner and the
            approver may move aliases).
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    moves = []
    old = get_alias(name, CHAMPION)
    if old is not None and old.version != str(version):
        _move_alias(client, name, PREVIOUS, old.version)
        moves.append(f"{PREVIOUS} -> {old.version}")
    _move_alias(client, name, CHAMPION, str(version))
    moves.append(f"{CHAMPION} -> {version}")
    challenger = get_alias(name, CHALLENGER)
    if challenger is not None and challenger.version == str(version):
        _remove_alias(client, name, CHALLENGER, challenger.version)
        moves.append(f"{CHALLENGER} removed")
    return moves


def retire_challenger(name: str, version: str) -> list[str]:
    """After a rollback: remove `challenger` when it points at `version` (the champion stays as it is)."""
    from mlflow import MlflowClient

    challenger = get_alias(name, CHALLENGER)
    if challenger is None or challenger.version != str(version):
        return []
    _remove_alias(MlflowClient(), name, CHALLENGER, challenger.version)
    return [f"{CHALLENGER} removed"]


def tag_version(name: str, version: str, tags: Mapping[str, Any]) -> None:
    """Set tags on a model version (values as strings)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    with access(f"tag version {version} of model {name!r}"):
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, str(value))


def log_run_artifacts(run_id: str, local_dir: Path, artifact_path: str) -> None:
    """Attach the files of `local_dir` to a (finished) run under `artifact_path`."""
    from mlflow import MlflowClient

    with access(f"attach {artifact_path} to run {run_id}"):
        MlflowClient().log_artifacts(run_id, str(local_dir), artifact_path)
