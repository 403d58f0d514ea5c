"""Online feature reads on the serving path: Feast's Redis layout read in one pipeline, without Feast's generic
request and response objects.

`FeatureStore.get_online_features_async` cost 0.75 ms of CPU per one-transaction call on these cores (profiled in
ADR 0016), about half of it building and unpacking generic objects (feature-reference parsing, entity checks,
the OnlineResponse protos, `to_dict`) around one Redis round trip. For the Redis online store, `OnlineReader` reads
the same hash fields with the store's own methods (Feast's entity-key serialization, its field hashes, its value
decoding) in one pipeline: 0.35 ms. Every other online store (the embedded SQLite one of `make run`, Redis Cluster
or Sentinel) goes through Feast's generic read (`get_online_features_async`, or the blocking one in a thread where
the store has no async reads), and so does a Redis read with `lean=False`.

`tests/integration/test_feast_redis_postgres.py` compares both reads on the real Redis, hits and misses, value by
value. The lean read's plan (which hash fields of which keys) is made once: it follows from the project, the view
and feature names and the key serialization, which change only with the code (with online feature-view
versioning, not used here, Feast's read is used).
"""

from __future__ import annotations

import asyncio
from typing import Any

from feast import FeatureStore


class OnlineReader:
    """The features of `refs` ("view:feature") for entity rows, from `store`'s online store.

    Args:
        store: An open Feast store (registry loaded).
        refs: Feature references, "view:feature", as `get_online_features` takes them.
        lean: Read Redis directly with the store's own methods where the store is plain Redis (False: always
            Feast's generic read).
    """

    def __init__(self, store: FeatureStore, refs: list[str], lean: bool = True) -> None:
        self.store = store
        self.refs = refs
        self._plan: list[tuple[str, Any, str, list[str], list[Any]]] | None = None
        self._async_reads = bool(store._get_provider().online_store.async_supported.read)
        if lean:
            self._plan = self._lean_plan()

    @property
    def lean(self) -> bool:
        """Whether reads skip Feast's generic machinery."""
        return self._plan is not None

    def _lean_plan(self) -> list[tuple[str, Any, str, list[str], list[Any]]] | None:
        """Per view: join key, its value type, the view's name in Redis, the features and their hash fields."""
        from feast.infra.online_stores.redis import RedisOnlineStore, RedisType, _versioned_fv_name

        online = self.store._get_provider().online_store
        config = self.store.config
        if type(online) is not RedisOnlineStore or config.online_store.redis_type != RedisType.redis:
            return None
        if config.registry.enable_online_feature_view_versioning:
            return None  # view names in Redis change with the registry: Feast's read follows them
        by_view: dict[str, list[str]] = {}
        for ref in self.refs:
            view, _, feature = ref.partition(":")
            by_view.setdefault(view, []).append(feature)
        plan = []
        for view_name, features in by_view.items():
            view = self.store.get_feature_view(view_name)
            if len(view.entity_columns) != 1:
                return None  # composite keys: Feast's generic read
            entity = view.entity_columns[0]
            name = _versioned_fv_name(view, config)
            requested, fields = online._generate_hset_keys_for_features(view, features, fv_name_override=name)
            plan.append((entity.name, entity.dtype.to_value_type(), name, requested, fields))
        return plan

    async def read(self, entity_rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
        """Feature name -> one value per entity row (None where the store has nothing), as Feast's `to_dict` gives
        the features (join keys are not repeated)."""
        if self._plan is None:
            if self._async_reads:
                response = await self.store.get_online_features_async(features=self.refs, entity_rows=entity_rows)
            else:  # a store without async reads (SQLite) blocks: off the event loop
                call = self.store.get_online_features
                response = await asyncio.to_thread(call, features=self.refs, entity_rows=entity_rows)
            return response.to_dict()
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values

        online = self.store._get_provider().online_store
        config = self.store.config
        client = await online._get_client_async(config.online_store)
        async with client.pipeline(transaction=False) as pipe:
            for key, value_type, _, _, fields in self._plan:
                values = python_values_to_proto_values([row[key] for row in entity_rows], value_type)
                entities = [EntityKey(join_keys=[key], entity_values=[v]) for v in values]
                for redis_key in online._generate_redis_keys_for_entities(config, entities):
                    pipe.hmget(redis_key, fields)
            found = await pipe.execute()
        out: dict[str, list[Any]] = {}
        n = len(entity_rows)
        for i, (_, _, name, requested, _) in enumerate(self._plan):
            rows = online._convert_redis_values_to_protobuf(found[i * n : (i + 1) * n], name, requested)
            for feature in requested:
                if feature.startswith("_ts:"):
                    continue
                out[feature] = [
                    None if values is None else feast_value_type_to_python_type(values[feature]) for _, values in rows
                ]
        return out
