"""Loading a window of the prediction log for the monitor."""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlplatform.data.labels import record_key
from mlplatform.monitoring.prediction_log import read_records
from mlplatform.monitoring.references import MonitorError

# ------------------------------------------------------------------------------------------ inputs


def served_unix_s(record: Mapping[str, Any]) -> float | None:
    """When a record was served (its `served_at`), in seconds since the epoch; None when absent or invalid."""
    raw = record.get("served_at")
    if not raw:
        return None
    try:
        t = datetime.fromisoformat(str(raw))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


#: What quality needs of a prediction outside the drift window (the rest is dropped to bound memory).
QUALITY_FIELDS = ("model_name", "model_version", "record_id", "transaction_id", "score", "_served_unix_s")


def load_predictions(
    log_dir: Path,
    model_name: str,
    since_unix_s: float,
    missing_ok: bool = False,
    full_since_unix_s: float | None = None,
    labelled: Container[str] | None = None,
) -> list[dict[str, Any]]:
    """Records of `model_name` served after `since_unix_s`, each with `_served_unix_s` added.

    With `full_since_unix_s` and `labelled`, a record served at or before `full_since_unix_s` (outside
    every drift window) is kept only when its id has a label, and only with `QUALITY_FIELDS`: a week of
    traffic is not held in memory for the quality window.

    Raises:
        MonitorError: When the folder does not exist (unless `missing_ok`: then there are no records).
    """

    if not log_dir.is_dir():
        if missing_ok:
            return []
        raise MonitorError(
            f"prediction log folder {log_dir} does not exist; serve traffic first (`mlplatform serve`) or point "
            "MLPLATFORM_MONITOR_PREDICTION_LOG_DIR / --prediction-log-dir at the serving log"
        )
    return select_records(read_records(log_dir), model_name, since_unix_s, full_since_unix_s, labelled)


def select_records(
    records: Iterable[dict[str, Any]],
    model_name: str,
    since_unix_s: float,
    full_since_unix_s: float | None = None,
    labelled: Container[str] | None = None,
) -> list[dict[str, Any]]:
    """The records of `model_name` served after `since_unix_s`, with `_served_unix_s` added (see
    `load_predictions`; the event stream's records go through the same selection)."""
    out = []
    for r in records:
        t = served_unix_s(r)
        if t is None or t <= since_unix_s or r.get("model_name") != model_name:
            continue
        r["_served_unix_s"] = t
        if full_since_unix_s is not None and labelled is not None and t <= full_since_unix_s:
            if record_key(r) not in labelled:
                continue
            r = {k: r.get(k) for k in QUALITY_FIELDS}
        out.append(r)
    return out
