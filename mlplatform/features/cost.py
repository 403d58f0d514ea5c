"""What each model feature costs to serve: bytes it keeps in the online store, and the time to look it up.

Both are measured through Feast's public API, so they hold for every online store: the bytes are the size of
the `ValueProto` Feast writes for the value (its online stores store exactly that serialisation, under a key of
a few bytes), averaged over the entities; the time is one online lookup of that feature alone for one request
(for an on-demand feature: its inputs fetched and the feature computed). The time belongs in benchmarks
(`make bench-features`), never in a test.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

from feast import FeatureStore

from mlplatform.features.store import FEATURE_SERVICE


def feature_refs(store: FeatureStore, service: str = FEATURE_SERVICE) -> dict[str, str]:
    """Model feature name -> its Feast reference (`view:feature`), from the FeatureService."""
    refs = {}
    for projection in store.get_feature_service(service).feature_view_projections:
        for field in projection.features:
            refs[field.name] = f"{projection.name_to_use()}:{field.name}"
    return refs


def on_demand_views(store: FeatureStore) -> set[str]:
    """Names of the on-demand feature views (computed per request, nothing stored)."""
    return {v.name for v in store.list_on_demand_feature_views()}


def stored_bytes(
    store: FeatureStore, entity_rows: Sequence[Mapping[str, Any]], service: str = FEATURE_SERVICE
) -> dict[str, float]:
    """Mean bytes per entity each stored model feature keeps in the online store (on-demand features: 0).

    Args:
        store: The feature store, materialized.
        entity_rows: Entity rows to read (customer_id, merchant_id and the request fields).
        service: The FeatureService whose features are measured.
    """
    if not entity_rows:
        raise ValueError("stored_bytes needs at least one entity row")
    refs = feature_refs(store, service)
    computed = on_demand_views(store)
    stored = {name: ref for name, ref in refs.items() if ref.split(":")[0] not in computed}
    response = store.get_online_features(features=list(stored.values()), entity_rows=[dict(r) for r in entity_rows])
    proto = response.proto
    names = list(proto.metadata.feature_names.val)
    out = dict.fromkeys(refs, 0.0)
    for name, vector in zip(names, proto.results, strict=True):
        if name in stored:
            sizes = [v.ByteSize() for v in vector.values if v.WhichOneof("val") is not None]
            out[name] = float(statistics.fmean(sizes)) if sizes else 0.0
    return out


def lookup_seconds(
    store: FeatureStore, feature_ref: str, entity_rows: Sequence[Mapping[str, Any]], repeats: int = 50
) -> float:
    """Median seconds of one online lookup of `feature_ref` alone, for one request (one entity row each)."""
    if repeats < 1 or not entity_rows:
        raise ValueError("lookup_seconds needs repeats >= 1 and at least one entity row")
    times = []
    for i in range(repeats):
        row = dict(entity_rows[i % len(entity_rows)])
        started = time.perf_counter()
        store.get_online_features(features=[feature_ref], entity_rows=[row])
        times.append(time.perf_counter() - started)
    return float(statistics.median(times))
