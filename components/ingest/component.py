"""KFP component of the ingest step: a thin wrapper around components.ingest.step."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from mlplatform.settings import DEFAULT_COMPONENT_IMAGE


@dsl.component(base_image=DEFAULT_COMPONENT_IMAGE, install_kfp_package=False)
def ingest(
    n_transactions: int,
    n_days: int,
    seed: int,
    fraud_rate: float,
    drift: float,
    source_path: str,
    raw: Output[Dataset],
) -> str:
    """Produce or load the raw transaction snapshot.

    Args:
        n_transactions: Transactions to generate.
        n_days: Days the transactions span.
        seed: Generator seed.
        fraud_rate: Share of fraud to generate.
        drift: Distribution shift (0 to 1) to generate.
        source_path: Existing Parquet snapshot to load instead ("" to generate).
        raw: The snapshot (Parquet).

    Returns:
        What was ingested (JSON of IngestResult: content hash, rows, fraud rows, time window).
    """
    import json
    from dataclasses import asdict
    from pathlib import Path

    from components.ingest.step import run_ingest

    result = run_ingest(Path(raw.path), n_transactions, n_days, seed, fraud_rate, drift, source_path)
    raw.metadata.update(asdict(result))
    return json.dumps(asdict(result))
