"""Delayed-label feed: labels as JSON-lines files, emitted as they become known, joined to predictions by id.

A label file holds one JSON object per line: ``{"transaction_id": str, "label": 0 | 1, "label_timestamp":
ISO-8601 UTC}``. Files are named ``labels-<UTC stamp>-<pid>-<seq>.jsonl`` and written atomically (a
temporary name, then a rename), so a reader never sees half a file. A label is known to the monitor once
it is in the folder; when a transaction has several labels (a corrected chargeback), the one with the
latest ``label_timestamp`` wins.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from mlplatform.errors import MlPlatformError

FILE_GLOB = "labels-*.jsonl"
_SEQ = itertools.count(1)


class LabelFeedError(MlPlatformError):
    """A label file or label frame is malformed."""


@dataclass(frozen=True)
class Label:
    """The known outcome of one transaction.

    Attributes:
        transaction_id: The id the prediction was logged under (its record id).
        label: 1 for fraud, 0 for legitimate.
        label_timestamp_unix_s: When the label became known (seconds since the epoch).
    """

    transaction_id: str
    label: int
    label_timestamp_unix_s: float


def emit_labels(
    raw_transactions: pd.DataFrame,
    served_transaction_ids: Iterable[str],
    until: datetime,
    since: datetime | None = None,
) -> pd.DataFrame:
    """The labels of served transactions that became known in (`since`, `until`].

    Generated data carries each transaction's `label_timestamp` (chargebacks arrive days later); this
    replays that delay: a label is emitted only once its time has come.

    Args:
        raw_transactions: Generated transactions (`transaction_id`, `is_fraud`, `label_timestamp`).
        served_transaction_ids: Ids of transactions that were scored (others get no label).
        until: Latest label time to emit (inclusive), timezone-aware.
        since: Labels at or before this time were emitted earlier (exclusive); None: from the start.

    Returns:
        `transaction_id`, `label`, `label_timestamp`, sorted by label time.

    Raises:
        LabelFeedError: When a column is missing or a bound is not timezone-aware.
    """
    missing = [c for c in ("transaction_id", "is_fraud", "label_timestamp") if c not in raw_transactions.columns]
    if missing:
        raise LabelFeedError(f"raw transactions lack the columns {missing} (use mlplatform.data.generator output)")
    for name, bound in (("until", until), ("since", since)):
        if bound is not None and bound.tzinfo is None:
            raise LabelFeedError(f"{name}={bound} must be timezone-aware (UTC)")
    ts = pd.to_datetime(raw_transactions["label_timestamp"], utc=True)
    keep = raw_transactions["transaction_id"].isin(set(served_transaction_ids)) & (ts <= pd.Timestamp(until))
    if since is not None:
        keep &= ts > pd.Timestamp(since)
    out = pd.DataFrame(
        {
            "transaction_id": raw_transactions.loc[keep, "transaction_id"].astype(str),
            "label": raw_transactions.loc[keep, "is_fraud"].astype(int),
            "label_timestamp": ts[keep],
        }
    )
    return out.sort_values("label_timestamp", kind="stable").reset_index(drop=True)


def write_labels(labels: pd.DataFrame, directory: Path) -> Path | None:
    """Write labels as a new file in the label folder (atomically); None when there is nothing to write.

    Raises:
        LabelFeedError: When a column is missing or a label is not 0/1.
    """
    missing = [c for c in ("transaction_id", "label", "label_timestamp") if c not in labels.columns]
    if missing:
        raise LabelFeedError(f"labels lack the columns {missing}")
    if labels.empty:
        return None
    values = labels["label"].astype(int)
    if not values.isin([0, 1]).all():
        raise LabelFeedError(f"labels must be 0 or 1, got {sorted(set(values.tolist()) - {0, 1})}")
    ts = pd.to_datetime(labels["label_timestamp"], utc=True)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = directory / f"labels-{stamp}-{os.getpid()}-{next(_SEQ):04d}.jsonl"
    tmp = directory / f".{path.name}.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        for tid, label, when in zip(labels["transaction_id"].astype(str), values, ts, strict=True):
            row = {"transaction_id": tid, "label": int(label), "label_timestamp": when.isoformat()}
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)
    return path


def parse_label(obj: Mapping[str, Any], where: str) -> Label:
    """A label from its JSON object (a line of a label file, an event of the labels topic).

    Raises:
        LabelFeedError: Naming `where` and what is wrong.
    """
    try:
        label = int(obj["label"])
        when = datetime.fromisoformat(str(obj["label_timestamp"]))
        tid = str(obj["transaction_id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise LabelFeedError(
            f"{where}: a label needs transaction_id, label (0/1) and label_timestamp (ISO-8601): {exc}"
        ) from exc
    if label not in (0, 1):
        raise LabelFeedError(f"{where}: label must be 0 or 1, got {label}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return Label(tid, label, when.timestamp())


def iter_labels(directory: Path) -> Iterator[Label]:
    """Every label in a label folder, oldest file first (a torn last line is skipped).

    Raises:
        LabelFeedError: When a line is not a valid label (the message names file and line).
    """
    for path in sorted(directory.glob(FILE_GLOB)):
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.endswith("\n") or not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LabelFeedError(f"{path}:{n}: not JSON: {exc}") from exc
                yield parse_label(obj, f"{path}:{n}")


def read_labels(directory: Path) -> dict[str, Label]:
    """The known label of each transaction id (the latest by label time); empty when the folder is absent."""
    if not directory.is_dir():
        return {}
    known: dict[str, Label] = {}
    for lab in iter_labels(directory):
        old = known.get(lab.transaction_id)
        if old is None or lab.label_timestamp_unix_s >= old.label_timestamp_unix_s:
            known[lab.transaction_id] = lab
    return known


def record_key(record: Mapping[str, Any]) -> str | None:
    """The id a prediction record is joined to labels by: its record id (the transaction id the client sent)."""
    key = record.get("record_id") or record.get("transaction_id")
    return str(key) if key else None


def join_labels(
    records: Iterable[Mapping[str, Any]], labels: Mapping[str, Label]
) -> list[tuple[Mapping[str, Any], int]]:
    """The prediction records that have a known label, each with its label (records without one are left out)."""
    out = []
    for r in records:
        key = record_key(r)
        lab = labels.get(key) if key is not None else None
        if lab is not None:
            out.append((r, lab.label))
    return out
