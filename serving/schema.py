"""The transformer's request contract (pre-assertion): what a transaction must look like to be scored.

A request is `{"instances": [transaction, ...]}` (KServe v1) or an Open Inference Protocol v2 request
with one column per field. Anything else is answered with 400 and a JSON error naming the field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from serving.errors import InvalidRequest

#: Transaction fields a client may send; the first four are required.
REQUIRED_FIELDS = ("customer_id", "merchant_id", "amount", "timestamp")
OPTIONAL_FIELDS = ("transaction_id",)
#: Plausible event times: 2000-01-01 .. 2100-01-01 (Unix seconds).
MIN_UNIX_S, MAX_UNIX_S = 946_684_800.0, 4_102_444_800.0
MAX_ID = 2**63 - 1
_TRANSACTION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class Transaction:
    """One validated transaction."""

    customer_id: int
    merchant_id: int
    amount: float
    event_unix_s: float
    transaction_id: str | None = None


def _int_id(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(where, f"must be an integer id, got {type(value).__name__}")
    if not 0 <= value <= MAX_ID:
        raise InvalidRequest(where, f"must be between 0 and {MAX_ID}, got {value}")
    return value


def _amount(value: Any, where: str, max_amount: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(where, f"must be a number, got {type(value).__name__}")
    amount = float(value)
    if not math.isfinite(amount):
        raise InvalidRequest(where, "must be finite")
    if amount <= 0:
        raise InvalidRequest(where, f"must be positive, got {amount}")
    if amount > max_amount:
        raise InvalidRequest(where, f"must be at most {max_amount:g}, got {amount:g}")
    return amount


def _timestamp(value: Any, where: str) -> float:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(where, f"must be an ISO 8601 time or Unix seconds, got {value[:40]!r}") from None
        if parsed.tzinfo is None:
            raise InvalidRequest(where, "must carry a time zone (e.g. 2026-11-26T10:00:00Z)")
        seconds = parsed.timestamp()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise InvalidRequest(where, "must be finite")
    else:
        raise InvalidRequest(where, f"must be an ISO 8601 string or Unix seconds, got {type(value).__name__}")
    if not MIN_UNIX_S <= seconds <= MAX_UNIX_S:
        raise InvalidRequest(where, "must lie between 2000-01-01 and 2100-01-01")
    return seconds


def _transaction_id(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _TRANSACTION_ID.match(value):
        raise InvalidRequest(where, "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
    return value


def parse_transaction(item: Any, where: str, max_amount: float) -> Transaction:
    """Validate one transaction object."""
    if not isinstance(item, dict):
        raise InvalidRequest(where, f"must be an object, got {type(item).__name__}")
    unknown = sorted(set(item) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise InvalidRequest(
            f"{where}.{unknown[0]}",
            f"unknown field (allowed: {', '.join(REQUIRED_FIELDS)}, {', '.join(OPTIONAL_FIELDS)})",
        )
    for name in REQUIRED_FIELDS:
        if name not in item or item[name] is None:
            raise InvalidRequest(f"{where}.{name}", "is required")
    return Transaction(
        customer_id=_int_id(item["customer_id"], f"{where}.customer_id"),
        merchant_id=_int_id(item["merchant_id"], f"{where}.merchant_id"),
        amount=_amount(item["amount"], f"{where}.amount", max_amount),
        event_unix_s=_timestamp(item["timestamp"], f"{where}.timestamp"),
        transaction_id=_transaction_id(item.get("transaction_id"), f"{where}.transaction_id"),
    )


def _check_batch(n: int, where: str, max_batch_size: int) -> None:
    if n == 0:
        raise InvalidRequest(where, "must not be empty")
    if n > max_batch_size:
        raise InvalidRequest(where, f"holds {n} transactions; at most {max_batch_size} per request")


def parse_v1(payload: Any, max_batch_size: int, max_amount: float) -> list[Transaction]:
    """Validate a v1 request body `{"instances": [...]}`."""
    if not isinstance(payload, dict):
        raise InvalidRequest("body", f"must be a JSON object with 'instances', got {type(payload).__name__}")
    extra = sorted(set(payload) - {"instances"})
    if extra:
        raise InvalidRequest(extra[0], "unknown top-level field (only 'instances' is accepted)")
    instances = payload.get("instances")
    if not isinstance(instances, list):
        raise InvalidRequest("instances", "is required and must be a list of transactions")
    _check_batch(len(instances), "instances", max_batch_size)
    return [parse_transaction(item, f"instances[{i}]", max_amount) for i, item in enumerate(instances)]


def parse_v2_columns(columns: dict[str, list[Any]], max_batch_size: int, max_amount: float) -> list[Transaction]:
    """Validate the inputs of a v2 request, one named column per field (already decoded to lists)."""
    unknown = sorted(set(columns) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise InvalidRequest(f"inputs.{unknown[0]}", "unknown input")
    missing = [f for f in REQUIRED_FIELDS if f not in columns]
    if missing:
        raise InvalidRequest(f"inputs.{missing[0]}", "is required")
    lengths = {name: len(col) for name, col in columns.items()}
    n = lengths["customer_id"]
    _check_batch(n, "inputs", max_batch_size)
    for name, length in lengths.items():
        if length != n:
            raise InvalidRequest(f"inputs.{name}", f"has {length} elements; customer_id has {n}")
    rows = [{name: columns[name][i] for name in columns} for i in range(n)]
    return [parse_transaction(row, f"inputs[{i}]", max_amount) for i, row in enumerate(rows)]
