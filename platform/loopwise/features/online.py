"""Push a partition's latest feature rows into Feast's online store, fast, in Feast's own format.

`feast materialize` builds one protobuf object per value and, for SQLite, issues one statement
per value. Here each column is encoded once per distinct value (with protobuf itself, so the
bytes are exactly Feast's), rows go in with one `executemany` (SQLite) or one pipeline (Redis),
and reading back through Feast's SDK gives the same values. Dagster decides which partition to
push, so nothing is materialized twice by accident.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView


@dataclass(frozen=True)
class PushResult:
    """What one push wrote."""

    view: str
    entities: int
    values: int
    skipped_older: int = 0


def latest_per_entity(rows: pa.Table, keys: list[str], timestamp: str) -> pd.DataFrame:
    """The newest row of each entity (what Feast's materialization writes)."""
    frame = rows.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    return frame.sort_values(timestamp, kind="stable").drop_duplicates(keys, keep="last").reset_index(drop=True)


def entity_keys(frame: pd.DataFrame, keys: list[str]) -> list[bytes]:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    if len(keys) != 1:
        raise NotImplementedError("the fast online push supports views with one string join key")
    return [serialize_entity_key(EntityKey(join_keys=keys, entity_values=[Value(string_val=str(v))]), 3)
            for v in frame[keys[0]]]


def _proto_field(dtype: Any) -> str:
    from feast.types import Bool, Float32, Float64, Int32, Int64, String

    fields = {Int64: "int64_val", Int32: "int32_val", Float64: "double_val", Float32: "float_val",
              String: "string_val", Bool: "bool_val"}
    if dtype not in fields:
        raise NotImplementedError(f"the fast online push does not encode {dtype}; use feast materialize")
    return fields[dtype]


def encode_column(values: pd.Series, dtype: Any) -> tuple[list[bytes], list[str | None]]:
    """Serialized ValueProto bytes and value_text (as Feast's SQLite store writes it) per row."""
    from feast.protos.feast.types.Value_pb2 import Value

    field = _proto_field(dtype)
    cast = {"int64_val": int, "int32_val": int, "double_val": float, "float_val": float, "string_val": str,
            "bool_val": bool}[field]
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    encoded: list[bytes] = []
    texts: list[str | None] = []
    for value in uniques:
        proto = Value(**{field: cast(value)})
        raw = getattr(proto, field)
        encoded.append(proto.SerializeToString())
        texts.append(str(raw))  # Feast's value_text: str() of the proto value
    encoded.append(b"")  # a null is an empty Value, as Feast writes it
    texts.append(None)
    return [encoded[c] for c in codes], [texts[c] for c in codes]


def _view_rows(store: FeatureStore, view_name: str, rows: pa.Table) -> tuple[FeatureView, pd.DataFrame, list[str], str]:
    view = store.get_feature_view(view_name)
    keys = [c.name for c in view.entity_columns]
    timestamp = view.batch_source.timestamp_field
    return view, latest_per_entity(rows, keys, timestamp), keys, timestamp


def push(store: FeatureStore, view_name: str, rows: pa.Table) -> PushResult:
    """Write the newest row per entity of `rows` for one feature view into the online store."""
    kind = type(store.config.online_store).__name__
    if kind == "SqliteOnlineStoreConfig":
        return _push_sqlite(store, view_name, rows)
    if kind == "RedisOnlineStoreConfig":
        return _push_redis(store, view_name, rows)
    raise NotImplementedError(f"no fast online push for {kind}; use feast materialize")


def _push_sqlite(store: FeatureStore, view_name: str, rows: pa.Table) -> PushResult:
    from feast.infra.online_stores.sqlite import _table_id

    view, frame, keys, timestamp = _view_rows(store, view_name, rows)
    table = _table_id(store.project, view)
    ek = entity_keys(frame, keys)
    # Feast's SQLite store keeps event time as whole epoch seconds of the naive-UTC timestamp.
    event_ts = [int(ts.timestamp()) for ts in pd.to_datetime(frame[timestamp], utc=True)]
    batch: list[tuple[Any, ...]] = []
    for feature in view.features:
        values, texts = encode_column(frame[feature.name], feature.dtype)
        batch.extend(zip(ek, [feature.name] * len(ek), values, texts, event_ts, [None] * len(ek), strict=True))
    conn = sqlite3.connect(store.config.online_store.path)
    try:
        with conn:
            conn.executemany(
                f'INSERT INTO "{table}" (entity_key, feature_name, value, value_text, event_ts, created_ts) '
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
                "value = excluded.value, value_text = excluded.value_text, event_ts = excluded.event_ts, "
                "created_ts = excluded.created_ts", batch)
    finally:
        conn.close()
    return PushResult(view_name, len(frame), len(batch))


def _push_redis(store: FeatureStore, view_name: str, rows: pa.Table) -> PushResult:
    from feast.infra.online_stores.helpers import _mmh3
    from feast.infra.online_stores.redis import RedisOnlineStore
    from google.protobuf.timestamp_pb2 import Timestamp

    view, frame, keys, timestamp = _view_rows(store, view_name, rows)
    client = RedisOnlineStore()._get_client(store.config.online_store)
    project = store.project.encode()
    redis_keys = [k + project for k in entity_keys(frame, keys)]
    ts_field = f"_ts:{view.name}"
    stamps = []
    for ts in pd.to_datetime(frame[timestamp], utc=True):
        proto = Timestamp()
        proto.FromDatetime(ts.to_pydatetime().astimezone(UTC))
        stamps.append(proto)
    columns = {_mmh3(f"{view.name}:{f.name}"): encode_column(frame[f.name], f.dtype)[0] for f in view.features}
    with client.pipeline(transaction=False) as pipe:
        for key in redis_keys:
            pipe.hget(key, ts_field)
        previous = pipe.execute()
    skipped = 0
    with client.pipeline(transaction=False) as pipe:
        for i, key in enumerate(redis_keys):
            new = stamps[i].seconds * 1_000_000_000 + stamps[i].nanos
            if previous[i]:
                old = Timestamp()
                old.ParseFromString(previous[i])
                if new <= old.seconds * 1_000_000_000 + old.nanos:  # Feast keeps the newer value
                    skipped += 1
                    continue
            mapping = {ts_field: stamps[i].SerializeToString(), **{f: v[i] for f, v in columns.items()}}
            pipe.hset(key, mapping=mapping)
        pipe.execute()
    return PushResult(view_name, len(frame), (len(frame) - skipped) * len(columns), skipped)

