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
versioning, not used here, Feast's read is used). For the same reason an entity's Redis key, Feast's
serialization of its join key, is kept once made (the most recent `KEY_CACHE_SIZE` per reader): a customer
scoring again pays a dictionary lookup instead of building and serializing protobufs. Values are decoded
from Feast's `ValueProto` directly where they are plain scalars (numbers, booleans, strings, bytes: the
attribute Feast's own conversion returns for them) and by Feast's conversion otherwise.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from feast import FeatureStore
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type

#: Entity keys (join key -> Redis key) a reader keeps, most recently used first.
KEY_CACHE_SIZE = 65_536
#: `ValueProto` fields Feast's conversion returns unchanged (`feast_value_type_to_python_type`).
_PLAIN_VALUES = frozenset({"int32_val", "int64_val", "float_val", "double_val", "bool_val", "string_val", "bytes_val"})


def python_value(blob: bytes | None) -> Any:
    """A feature value as Feast stores it in Redis (a serialized `ValueProto`) -> the Python value Feast's online
    read returns for it (None for a missing or empty value)."""
    if not blob:
        return None
    value = ValueProto.FromString(blob)
    kind = value.WhichOneof("val")
    if kind is None:
        return None
    if kind in _PLAIN_VALUES:
        return getattr(value, kind)
    return feast_value_type_to_python_type(value)


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
        self._redis_key: Callable[[int, type, Any], bytes] = functools.lru_cache(maxsize=KEY_CACHE_SIZE)(
            self._make_redis_key
        )
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
        online = self.store._get_provider().online_store
        client = await online._get_client_async(self.store.config.online_store)
        async with client.pipeline(transaction=False) as pipe:
            for view, (key, _, _, _, fields) in enumerate(self._plan):
                for row in entity_rows:
                    value = row[key]
                    pipe.hmget(self._redis_key(view, type(value), value), fields)
            found = await pipe.execute()
        out: dict[str, list[Any]] = {}
        n = len(entity_rows)
        for view, (_, _, _, requested, _) in enumerate(self._plan):
            replies = found[view * n : (view + 1) * n]
            for i, feature in enumerate(requested):
                if not feature.startswith("_ts:"):
                    out[feature] = [python_value(reply[i]) for reply in replies]
        return out

    def _make_redis_key(self, view: int, kind: type, value: Any) -> bytes:
        """The Redis key of the entity whose join key of plan entry `view` is `value` (of type `kind`: 1 and True
        are distinct entities), as Feast's Redis store makes it."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import python_values_to_proto_values

        assert self._plan is not None
        key, value_type = self._plan[view][0], self._plan[view][1]
        (proto,) = python_values_to_proto_values([value], value_type)
        online = self.store._get_provider().online_store
        entity = EntityKey(join_keys=[key], entity_values=[proto])
        return online._generate_redis_keys_for_entities(self.store.config, [entity])[0]
