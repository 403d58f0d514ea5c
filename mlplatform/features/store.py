"""Opening the Feast store of the feature repo, applying its definitions and materializing."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
from feast import FeatureStore, FileSource
from feast.repo_config import load_repo_config
from feast.repo_contents import RepoContents
from feast.repo_operations import parse_repo

from mlplatform.errors import ConfigError
from mlplatform.settings import DEFAULT_FEATURE_REPO

#: Name of the FeatureService the model is trained and served with.
FEATURE_SERVICE = "fraud_model_v1"
_UNSET_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def default_repo_path() -> Path:
    """The feature repo shipped with the project (`feature_repo/` beside the package)."""
    return DEFAULT_FEATURE_REPO


def open_store(repo_path: Path, data_dir: Path, config_file: str = "feature_store.yaml") -> FeatureStore:
    """Open the Feast store described by `repo_path/config_file`.

    Relative paths in the configuration and in the sources (registry file, SQLite online store,
    Parquet sources) resolve against `data_dir`, so that each run keeps its own state.

    Raises:
        ConfigError: When the configuration file is missing, references an environment variable
            that is not set, or is not a valid Feast configuration.
    """
    yaml_path = repo_path / config_file
    if not yaml_path.is_file():
        raise ConfigError(f"Feast configuration {yaml_path} does not exist")
    text = os.path.expandvars(yaml_path.read_text())
    unset = sorted({m.group(1) for m in _UNSET_VAR.finditer(_strip_comments(text))})
    if unset:
        raise ConfigError(f"Feast configuration {yaml_path} needs environment variable(s) {', '.join(unset)}")
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        config = load_repo_config(data_dir.resolve(), yaml_path)
    except Exception as exc:  # feast raises its own FeastConfigError, pydantic errors, YAML errors
        raise ConfigError(f"invalid Feast configuration {yaml_path}: {exc}") from exc
    return FeatureStore(repo_path=str(data_dir.resolve()), config=config)


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def apply_repo(store: FeatureStore, repo_path: Path) -> list[str]:
    """`feast apply`: register every object declared in the repo's Python files.

    File sources declared with relative paths are bound to the store's data directory first, so
    that every offline store (file, DuckDB) and every process reads the same absolute files.

    Returns:
        The names of the applied feature views and services.
    """
    repo = _parse_repo(repo_path.resolve())
    data_dir = Path(store.repo_path).resolve()
    for source in [*repo.data_sources, *(fv.batch_source for fv in repo.feature_views)]:
        if isinstance(source, FileSource) and not Path(source.path).is_absolute():
            source.file_options.uri = str(data_dir / source.path)
    objects = [
        *repo.entities,
        *repo.data_sources,
        *repo.feature_views,
        *repo.on_demand_feature_views,
        *repo.feature_services,
    ]
    store.apply(objects)
    return sorted(
        [fv.name for fv in repo.feature_views]
        + [fv.name for fv in repo.on_demand_feature_views]
        + [fs.name for fs in repo.feature_services]
    )


def _parse_repo(repo_path: Path) -> RepoContents:
    """Import the repo's modules the way the `feast` CLI does (from inside the repo folder)."""
    # Import afresh: apply_repo binds the imported sources to one data dir, and a module cached
    # from an earlier apply in this process would carry the previous run's paths.
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(repo_path):
            del sys.modules[name]
    previous_cwd = os.getcwd()
    sys.path.insert(0, str(repo_path))
    os.chdir(repo_path)
    try:
        return parse_repo(repo_path)
    finally:
        os.chdir(previous_cwd)
        sys.path.remove(str(repo_path))


def source_dir(data_dir: Path) -> Path:
    """Where the Parquet batch sources live (matches the relative paths in feature_repo/)."""
    return data_dir / "sources"


def write_sources(data_dir: Path, customer_stats: pd.DataFrame, merchant_stats: pd.DataFrame) -> None:
    """Write the batch sources the feature views read.

    Timestamps are stored to the microsecond: DuckDB, through which Feast appends pushed rows to a file source,
    reads a nanosecond timestamp with a time zone back as text, and the file would then hold text timestamps.
    """
    out = source_dir(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    for frame, name in ((customer_stats, "customer_stats"), (merchant_stats, "merchant_stats")):
        frame = frame.assign(event_timestamp=frame["event_timestamp"].astype("datetime64[us, UTC]"))
        frame.to_parquet(out / f"{name}.parquet", index=False)


def materialize(store: FeatureStore, start: datetime, end: datetime) -> None:
    """Load the latest values in [start, end] of every feature view into the online store."""
    store.materialize(start_date=start, end_date=end)


def feature_view_versions(store: FeatureStore) -> dict[str, str]:
    """A short content hash per feature view and the service: lineage for registered models."""
    out: dict[str, str] = {}
    for fv in store.list_feature_views():
        out[fv.name] = hashlib.sha256(fv.to_proto().spec.SerializeToString()).hexdigest()[:12]
    for odfv in store.list_on_demand_feature_views():
        out[odfv.name] = hashlib.sha256(odfv.to_proto().spec.SerializeToString()).hexdigest()[:12]
    fs = store.get_feature_service(FEATURE_SERVICE)
    out[FEATURE_SERVICE] = hashlib.sha256(fs.to_proto().spec.SerializeToString()).hexdigest()[:12]
    return out
