"""Ingest: produce (generate) or load the raw transaction snapshot and fingerprint it."""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import pandas as pd

from mlplatform.data.generator import TRANSACTION_COLUMNS, GeneratorConfig, generate_transactions
from mlplatform.errors import ConfigError


@dataclass(frozen=True)
class IngestResult:
    """What was ingested."""

    rows: int
    fraud_rows: int
    data_hash: str
    start: str
    end: str


def content_hash(df: pd.DataFrame) -> str:
    """SHA-256 of the table's content (independent of the file encoding)."""
    h = sha256(",".join(df.columns).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


def run_ingest(
    output_path: Path,
    n_transactions: int = 100_000,
    n_days: int = 60,
    seed: int = 42,
    fraud_rate: float = 0.02,
    drift: float = 0.0,
    source_path: str = "",
) -> IngestResult:
    """Write the raw snapshot to `output_path` (Parquet).

    Args:
        output_path: Where the snapshot goes.
        n_transactions: Transactions to generate (ignored with `source_path`).
        n_days: Days the generated transactions span.
        seed: Generator seed.
        fraud_rate: Generated share of fraud.
        drift: Generated distribution shift, 0 to 1.
        source_path: An existing Parquet snapshot to load instead of generating one.

    Raises:
        ConfigError: When a parameter is out of range or the source lacks required columns.
    """
    if source_path:
        src = Path(source_path)
        if not src.is_file():
            raise ConfigError(f"source_path {source_path} does not exist")
        df = pd.read_parquet(src)
        missing = [c for c in TRANSACTION_COLUMNS if c not in df.columns]
        if missing:
            raise ConfigError(f"source {source_path} lacks required column(s): {missing}")
        df = df[list(TRANSACTION_COLUMNS)]
    else:
        try:
            config = GeneratorConfig(
                n_transactions=n_transactions,
                n_days=n_days,
                seed=seed,
                fraud_rate=fraud_rate,
                drift=drift,
            )
        except ValueError as exc:
            raise ConfigError(f"invalid ingest parameter: {exc}") from exc
        df = generate_transactions(config)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(output_path, index=False)
    ts = df["event_timestamp"]
    return IngestResult(
        rows=len(df),
        fraud_rows=int(df["is_fraud"].sum()),
        data_hash=content_hash(df),
        start=ts.min().isoformat(),
        end=ts.max().isoformat(),
    )
