"""Feast declarations for the fraud workload: entities, sources, feature views, feature service."""

# Feast imports every .py file in this folder on `feast apply`; keep only declarations here.
# Feature names, windows and the request-time computation live in mlplatform.features.compute, the one
# place that training and serving share.
from datetime import timedelta

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64

from mlplatform.features import compute as F

# An entity is what features describe; its join key is the column that identifies it.
customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.INT64,
    description="A card holder",
)
merchant = Entity(
    name="merchant",
    join_keys=["merchant_id"],
    value_type=ValueType.INT64,
    description="A card acceptor",
)

# Batch sources: Parquet files written by the features step. The paths are relative to the feature
# data directory the platform hands to Feast, so each run (and each test) has its own files.
customer_source = FileSource(
    name="customer_stats_source",
    path="sources/customer_stats.parquet",
    timestamp_field="event_timestamp",
)
# The stream feature processor (mlplatform/features/stream.py) pushes each customer's fresh aggregates here:
# they go to the online store at once and are appended to customer_source (the offline history).
customer_push = PushSource(name="customer_stats_push", batch_source=customer_source)
merchant_source = FileSource(
    name="merchant_stats_source",
    path="sources/merchant_stats.parquet",
    timestamp_field="event_timestamp",
)

# A customer's spending aggregates, updated after each of their transactions: by materialization from the
# batch source (the pipeline's features step) and, where the event stream runs, by pushes within a second of
# the transaction. A row older than the TTL is not served (an inactive customer then looks like a new one).
customer_stats = FeatureView(
    name="customer_stats",
    entities=[customer],
    ttl=timedelta(seconds=F.CUSTOMER_TTL_S),
    schema=[Field(name=f, dtype=Int64 if f.startswith("cust_txn_count") else Float64) for f in F.CUSTOMER_FEATURES],
    source=customer_push,
    online=True,
    tags={"owner": "fraud-ml", "grain": "per transaction"},
)

# A merchant's volume and risk, as daily snapshots built only from mature (past) labels.
merchant_stats = FeatureView(
    name="merchant_stats",
    entities=[merchant],
    ttl=timedelta(days=2),
    schema=[
        Field(name=f, dtype=Int64 if f in ("merchant_category", "merchant_txn_count_30d") else Float64)
        for f in F.MERCHANT_FEATURES
    ],
    source=merchant_source,
    online=True,
    tags={"owner": "fraud-ml", "grain": "daily snapshot"},
)

# Fields that arrive with the request, not from a store.
transaction_request = RequestSource(
    name="transaction_request",
    schema=[Field(name="amount", dtype=Float64), Field(name="event_unix_s", dtype=Float64)],
)


# Request-time features: computed when features are retrieved, offline and online alike.
@on_demand_feature_view(
    sources=[customer_stats, merchant_stats, transaction_request],
    schema=[Field(name=f, dtype=Float64) for f in F.ON_DEMAND_FEATURES],
    mode="pandas",
)
def transaction_features(inputs: pd.DataFrame) -> pd.DataFrame:
    from mlplatform.features.compute import on_demand_features

    return on_demand_features(inputs)


# Exactly the model's features; training sets and online lookups both go through this service.
fraud_model_features = FeatureService(
    name="fraud_model_v1",
    features=[
        transaction_features,
        customer_stats[list(F.MODEL_CUSTOMER_FEATURES)],
        merchant_stats[list(F.MODEL_MERCHANT_FEATURES)],
    ],
    tags={"model": "fraud-detector"},
)
