"""`mlplatform features`: the stream feature processor (the customer aggregates from Kafka into Feast)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlplatform.cli.common import WorkDir, console, guarded
from mlplatform.errors import ConfigError
from mlplatform.events import TRANSACTIONS
from mlplatform.settings import PlatformSettings, load_settings

features_app = typer.Typer(help="Features kept fresh from the event stream (docs/adr/0019-stream-features.md).")


@features_app.command("stream")
@guarded
def features_stream(
    work_dir: WorkDir = None,
    bootstrap_servers: Annotated[
        str | None, typer.Option("--bootstrap-servers", help="Kafka brokers, host:port,...")
    ] = None,
    group_id: Annotated[str | None, typer.Option("--group-id", help="Kafka consumer group.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port of /metrics and /healthz (default 8090).")] = None,
) -> None:
    """Consume the transactions topic and push each customer's aggregates to Feast until Ctrl-C or SIGTERM."""
    import logging

    from mlplatform.features.stream import (  # deferred: Kafka and Feast load for this command only
        StreamFeatureProcessor,
        StreamSettings,
        open_feast_sink,
    )

    settings = load_settings(StreamSettings, kafka_bootstrap_servers=bootstrap_servers, group_id=group_id, port=port)
    platform = load_settings(PlatformSettings, work_dir=work_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sink = open_feast_sink(platform.feast_repo, platform.feast_data, platform.feast_config_file, settings.push_offline)
    console.print(f"stream feature processor: group {settings.group_id} on {settings.kafka_bootstrap_servers}")
    StreamFeatureProcessor(settings, sink).serve()


@features_app.command("backfill")
@guarded
def features_backfill(
    transactions: Annotated[
        Path, typer.Option("--transactions", help="Raw transactions (Parquet: the ingest step's or the data lake's).")
    ],
    bootstrap_servers: Annotated[
        str | None, typer.Option("--bootstrap-servers", help="Kafka brokers, host:port,...")
    ] = None,
) -> None:
    """Publish past transactions to the transactions topic in time order: the 30 days a new stream needs."""
    import json

    import pandas as pd

    from mlplatform.features.stream import StreamSettings  # deferred: Kafka and Feast load for this command only
    from mlplatform.features.stream_events import backfill  # deferred: as above

    settings = load_settings(StreamSettings, kafka_bootstrap_servers=bootstrap_servers)
    if not transactions.is_file():
        raise ConfigError(f"--transactions {transactions} does not exist")
    frame = pd.read_parquet(transactions)
    missing = sorted(
        {"transaction_id", "customer_id", "merchant_id", "merchant_category", "amount", "event_timestamp"}
        - set(frame.columns)
    )
    if missing:
        raise ConfigError(f"--transactions {transactions} lacks the columns {missing}")
    published = backfill(frame, settings)
    print(json.dumps({"published": published, "topic": settings.topic_name(TRANSACTIONS)}))
