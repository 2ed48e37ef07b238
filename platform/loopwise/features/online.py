"""Push a partition's latest feature rows into Feast's online store, fast, in Feast's own format.

`feast materialize` builds one protobuf object per value and writes one statement (SQLite) or one
pipelined command built in Python (Redis) per entity. Here the newest row per entity is picked with
Arrow, every column is encoded to Feast's exact bytes with vectorized NumPy (the same bytes that
protobuf writes; tests compare them), and the rows go in as a bulk: for SQLite an Arrow ingest
(ADBC) into a staging file, then one `INSERT ... SELECT` upsert in entity-key order through the
same SQLite library Feast reads with; for Redis one raw RESP buffer per phase. Reading back
through Feast's SDK gives the same values. Dagster decides which partition to push, so nothing is
materialized twice by accident.
"""

from __future__ import annotations

import logging
import sqlite3
import struct
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushResult:
    """What one push wrote."""

    view: str
    entities: int
    values: int
    skipped_older: int = 0


@dataclass(frozen=True)
class EncodedRows:
    """The newest row per entity of one feature view, encoded as Feast stores it, in entity-key byte order."""

    view: str
    entity_keys: pa.BinaryArray  # Feast's serialized entity keys, ascending
    values: dict[str, pa.BinaryArray]  # serialized ValueProto per feature; b"" is a null (an empty Value)
    texts: dict[str, pa.StringArray]  # value_text as Feast's SQLite store writes it (empty for Redis, which has none)
    event_times: pa.TimestampArray  # UTC, one per entity

    @property
    def features(self) -> list[str]:
        return sorted(self.values)


def latest_rows(rows: pa.Table, keys: list[str], timestamp: str) -> pa.Table:
    """The newest row of each entity (what Feast's materialization writes); on a tie, the later row."""
    order = pc.sort_indices(rows[timestamp])  # stable: equal times keep their input order
    rank = np.empty(rows.num_rows, np.int64)
    rank[order.to_numpy()] = np.arange(rows.num_rows)
    ranked = rows.select(keys).append_column("_rank", pa.array(rank))
    newest = ranked.group_by(keys, use_threads=False).aggregate([("_rank", "max")]).column("_rank_max")
    return rows.take(order.take(newest))


_KEY_TYPES = {pa.string(): 2, pa.large_string(): 2, pa.int64(): 4, pa.int32(): 3}  # Feast ValueType of a join key


def serialize_entity_keys(rows: pa.Table, keys: list[str]) -> list[bytes]:
    """Feast's entity-key serialization (version 3) of every row, without building an EntityKey proto per row."""
    names = sorted(keys)  # Feast sorts join keys by name
    header = struct.pack("<I", len(names)) + b"".join(
        struct.pack("<II", 2, len(n.encode())) + n.encode() for n in names)
    parts: list[list[bytes]] = []
    for name in names:
        column = rows[name]
        value_type = _KEY_TYPES.get(column.type)
        if value_type is None:
            raise NotImplementedError(f"the fast online push does not serialize join key {name!r} of type {column.type}")
        if column.null_count:
            raise ValueError(f"join key {name!r} has {column.null_count} null values; every online row needs its key")
        if value_type == 2:
            encoded = [v.encode() for v in column.to_pylist()]
        else:
            encoded = [struct.pack("<q" if value_type == 4 else "<i", v) for v in column.to_pylist()]
        parts.append([struct.pack("<II", value_type, len(e)) + e for e in encoded])
    return [header + b"".join(p) for p in zip(*parts, strict=True)]


# Value proto field tags (field number << 3 | wire type): int32_val=3, int64_val=4, double_val=5, float_val=6, bool_val=7.
_INT32_TAG, _INT64_TAG, _DOUBLE_TAG, _FLOAT_TAG, _BOOL_TAG = 0x18, 0x20, 0x29, 0x35, 0x38


def _binary(offsets: np.ndarray, data: np.ndarray) -> pa.BinaryArray:
    return pa.Array.from_buffers(pa.binary(), len(offsets) - 1, [None, pa.py_buffer(offsets.astype(np.int32)),
                                                                  pa.py_buffer(data)])


def _tagged_varints(tag: int, values: np.ndarray) -> pa.BinaryArray:
    """tag + protobuf varint of each int64 (negatives as ten bytes of two's complement, as protobuf writes int32/int64)."""
    unsigned = values.astype(np.int64).view(np.uint64)
    sizes = np.ones(len(unsigned), np.int64)
    for k in range(1, 10):
        sizes += unsigned >= (np.uint64(1) << np.uint64(7 * k))
    offsets = np.zeros(len(unsigned) + 1, np.int64)
    np.cumsum(sizes + 1, out=offsets[1:])
    data = np.empty(offsets[-1], np.uint8)
    data[offsets[:-1]] = tag
    for j in range(10):
        rows = np.nonzero(sizes > j)[0]
        if not len(rows):
            break
        group = (unsigned[rows] >> np.uint64(7 * j)) & np.uint64(0x7F)
        more = (sizes[rows] > j + 1).astype(np.uint64) << np.uint64(7)
        data[offsets[rows] + 1 + j] = (group | more).astype(np.uint8)
    return _binary(offsets, data)


def _tagged_fixed(tag: int, values: np.ndarray) -> pa.BinaryArray:
    """tag + little-endian fixed-width value (double, float)."""
    width = values.dtype.itemsize
    data = np.empty((len(values), width + 1), np.uint8)
    data[:, 0] = tag
    data[:, 1:] = values.astype(values.dtype.newbyteorder("<")).view(np.uint8).reshape(len(values), width)
    return _binary(np.arange(len(values) + 1) * (width + 1), data.reshape(-1))


def _float_texts(values: np.ndarray) -> pa.StringArray:
    """Python's str() of each value (Feast's value_text), computed once per distinct value."""
    bits = values.view(np.int64 if values.dtype.itemsize == 8 else np.int32)  # keeps -0.0 apart from 0.0
    distinct, inverse = np.unique(bits, return_inverse=True)
    floats = distinct.view(values.dtype).astype(np.float64).tolist()
    return pa.array([str(v) for v in floats], pa.string()).take(pa.array(inverse.reshape(-1)))


def _feast_type_name(dtype: Any) -> str:
    from feast.types import Bool, Float32, Float64, Int32, Int64, String

    names = {Int64: "int64", Int32: "int32", Float64: "float64", Float32: "float32", String: "string", Bool: "bool"}
    if dtype not in names:
        raise NotImplementedError(f"the fast online push does not encode {dtype}; use feast materialize")
    return names[dtype]


def encode_values(column: pa.ChunkedArray | pa.Array, dtype: Any,
                  with_texts: bool = True) -> tuple[pa.BinaryArray, pa.StringArray | None]:
    """Serialized ValueProto and value_text of every value, as Feast writes them; null and NaN are null."""
    from feast.protos.feast.types.Value_pb2 import Value

    kind = _feast_type_name(dtype)
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    valid = pc.is_valid(array)
    if kind in ("float64", "float32"):
        valid = pc.and_(valid, pc.invert(pc.fill_null(pc.is_nan(array), True)))
    filled = pc.if_else(valid, array, pa.scalar({"string": "", "bool": False}.get(kind, 0), array.type))
    if kind == "string":
        strings = filled.to_pylist()
        values = pa.array([Value(string_val=s).SerializeToString() for s in strings], pa.binary())
        texts = pa.array(strings, pa.string())
    elif kind == "bool":
        flags = filled.to_numpy(zero_copy_only=False).astype(np.int64)
        values = _tagged_varints(_BOOL_TAG, flags)
        texts = pa.array(np.where(flags, "True", "False"), pa.string())
    elif kind in ("int64", "int32"):
        values = _tagged_varints(_INT64_TAG if kind == "int64" else _INT32_TAG, filled.to_numpy(zero_copy_only=False))
        texts = pc.cast(filled, pa.string())
    else:
        numbers = filled.to_numpy(zero_copy_only=False).astype(np.float64 if kind == "float64" else np.float32)
        values = _tagged_fixed(_DOUBLE_TAG if kind == "float64" else _FLOAT_TAG, numbers)
        texts = _float_texts(numbers) if with_texts else None
    values = pc.if_else(valid, values, pa.scalar(b"", pa.binary()))
    return values, pc.if_else(valid, texts, pa.scalar(None, pa.string())) if with_texts else None


def encode(store: FeatureStore, view_name: str, rows: pa.Table, with_texts: bool = True) -> EncodedRows:
    """The newest row per entity of `rows` for `view_name`, encoded and sorted by serialized entity key."""
    view = store.get_feature_view(view_name)
    if view.batch_source.created_timestamp_column:
        raise NotImplementedError(f"{view_name} has a created-timestamp column; the fast online push does not order "
                                  "by it: use feast materialize")
    keys = [c.name for c in view.entity_columns]
    missing = [c for c in [*keys, view.batch_source.timestamp_field, *(f.name for f in view.features)]
               if c not in rows.column_names]
    if missing:
        raise ValueError(f"rows for feature view {view_name} lack columns {missing}")
    newest = latest_rows(rows, keys, view.batch_source.timestamp_field)
    entity_keys = pa.array(serialize_entity_keys(newest, keys), pa.binary())
    order = pc.sort_indices(entity_keys)
    newest = newest.take(order)
    encoded = {f.name: encode_values(newest[f.name], f.dtype, with_texts) for f in view.features}
    times = pc.cast(newest[view.batch_source.timestamp_field], pa.timestamp("us", "UTC")).combine_chunks()
    return EncodedRows(
        view=_versioned_name(store, view),
        entity_keys=entity_keys.take(order),
        values={name: v for name, (v, _) in encoded.items()},
        texts={name: t for name, (_, t) in encoded.items()} if with_texts else {},
        event_times=times,
    )


def _versioned_name(store: FeatureStore, view: FeatureView) -> str:
    from feast.infra.online_stores.helpers import compute_versioned_name

    return compute_versioned_name(view, store.config.registry.enable_online_feature_view_versioning)


def push(store: FeatureStore, view_name: str, rows: pa.Table) -> PushResult:
    """Write the newest row per entity of `rows` for one feature view into the online store."""
    kind = type(store.config.online_store).__name__
    if kind not in ("SqliteOnlineStoreConfig", "RedisOnlineStoreConfig"):
        raise NotImplementedError(f"no fast online push for {kind}; use feast materialize")
    if kind == "SqliteOnlineStoreConfig":
        result = _write_sqlite(store, encode(store, view_name, rows))
    else:
        result = _write_redis(store, encode(store, view_name, rows, with_texts=False))
    log.info("pushed %s: %d entities, %d values (%d entities already newer online)", view_name, result.entities,
             result.values, result.skipped_older)
    return result


def _per_distinct(times: pa.TimestampArray, convert: Any, type: pa.DataType) -> pa.Array:
    """`convert` applied to each timestamp as a datetime, once per distinct value (a partition holds few)."""
    distinct = pc.unique(times)
    return pa.array([convert(t) for t in distinct.to_pylist()], type).take(pc.index_in(times, distinct))


BATCH_ENTITIES = 50_000  # entities per staged chunk or pipelined Redis batch: bounds memory and 32-bit offsets


def _write_sqlite(store: FeatureStore, rows: EncodedRows) -> PushResult:
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    config = store.config
    if getattr(config.online_store, "vector_enabled", False) or getattr(config.online_store,
                                                                         "enable_openai_compatible_store", False):
        raise NotImplementedError("the fast online push writes scalar features only; use feast materialize for "
                                  "vector or value_num stores")
    database = Path(SqliteOnlineStore._get_db_path(config))
    # The staging file is private to this push: ADBC's bundled SQLite never opens Feast's database, which is
    # written only through the sqlite3 module Feast itself uses (two SQLite copies on one file break locking).
    with tempfile.TemporaryDirectory(dir=database.parent, prefix=".loopwise-push-") as tmp:
        staging = Path(tmp) / "rows.db"
        values = _stage(staging, rows)
        conn = sqlite3.connect(database, isolation_level=None)
        try:
            conn.execute("PRAGMA cache_size=-262144")  # 256 MiB, this connection only
            conn.execute("ATTACH DATABASE ? AS staging", (str(staging),))
            conn.execute("BEGIN IMMEDIATE")
            try:  # one transaction: readers see the whole push or none of it
                conn.execute(
                    f'INSERT INTO main."{store.project}_{rows.view}" '
                    "(entity_key, feature_name, value, value_text, event_ts, created_ts) "
                    "SELECT entity_key, feature_name, value, value_text, event_ts, created_ts FROM staging.rows "
                    "WHERE true ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value, "
                    "value_text = excluded.value_text, event_ts = excluded.event_ts, created_ts = excluded.created_ts")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("DETACH DATABASE staging")
        finally:
            conn.close()
    return PushResult(rows.view, len(rows.entity_keys), values)


def _stage(path: Path, rows: EncodedRows) -> int:
    """Write one row per (entity, feature) to a staging SQLite file, in the online table's primary-key order."""
    import adbc_driver_sqlite.dbapi as adbc
    from feast.utils import to_naive_utc

    features = rows.features
    width = len(features)
    # Feast's SQLite adapter stores int(naive_utc.timestamp()) and reads it back the same way.
    event_ts = _per_distinct(rows.event_times, lambda t: int(to_naive_utc(t).timestamp()), pa.int64())
    keys = rows.entity_keys
    names = pa.array(features, pa.string())
    staged = 0
    with adbc.connect(str(path), autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("PRAGMA journal_mode=OFF")
        cur.execute("PRAGMA synchronous=OFF")
        for start in range(0, len(keys), BATCH_ENTITIES):
            count = min(BATCH_ENTITIES, len(keys) - start)
            entity = np.repeat(np.arange(count), width)
            feature = np.tile(np.arange(width), count)
            values = pa.concat_arrays([rows.values[f].slice(start, count) for f in features])
            texts = pa.concat_arrays([rows.texts[f].slice(start, count) for f in features])
            chunk = pa.table({
                "entity_key": keys.slice(start, count).take(entity),
                "feature_name": names.take(feature),
                "value": values.take(feature * count + entity),
                "value_text": texts.take(feature * count + entity),
                "event_ts": event_ts.slice(start, count).take(entity),
                "created_ts": pa.nulls(count * width, pa.int64()),
            })
            cur.adbc_ingest("rows", chunk, mode="create" if start == 0 else "append")
            staged += chunk.num_rows
    return staged


def _bulk(items: pa.Array) -> pa.Array:
    """Each binary value as a RESP bulk string: $<length>\\r\\n<bytes>\\r\\n."""
    lengths = pc.cast(pc.cast(pc.binary_length(items), pa.string()), pa.binary())
    return pc.binary_join_element_wise(_DOLLAR, lengths, _CRLF, items, _CRLF, _NOTHING)


_DOLLAR, _CRLF, _NOTHING = (pa.scalar(b, pa.binary()) for b in (b"$", b"\r\n", b""))


def _constant_bulk(item: bytes) -> pa.Scalar:
    return pa.scalar(b"$%d\r\n%s\r\n" % (len(item), item), pa.binary())


def _buffer(pieces: list[pa.Array | pa.Scalar]) -> bytes:
    """Join per-entity RESP pieces element-wise, then every entity's command, into one buffer."""
    commands = pc.binary_join_element_wise(*pieces, _NOTHING)
    offsets = np.frombuffer(commands.buffers()[1], np.int32, len(commands) + 1, commands.offset * 4)
    return commands.buffers()[2].to_pybytes()[offsets[0]:offsets[-1]]


class _Resp:
    """A raw RESP exchange over a redis-py connection: one buffer out, a known number of replies back."""

    def __init__(self, client: Any) -> None:
        self.pool = client.connection_pool
        self.conn = self.pool.get_connection()
        self.buffer = b""
        self.pos = 0

    def close(self, failed: bool) -> None:
        if failed:  # the stream position is unknown: never hand this connection back in use
            self.conn.disconnect()
        self.pool.release(self.conn)

    def send(self, payload: bytes) -> None:
        self.conn.send_packed_command([payload], check_health=False)

    def _fill(self) -> None:
        chunk = self.conn._sock.recv(1 << 20)  # redis-py's own socket: its parser would cost ~10 us per reply
        if not chunk:
            raise ConnectionError("Redis closed the connection during the online push")
        self.buffer = self.buffer[self.pos:] + chunk
        self.pos = 0

    def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n", self.pos)) < 0:
            self._fill()
        line, self.pos = self.buffer[self.pos:end], end + 2
        if line[:1] == b"-":
            raise RuntimeError(f"Redis refused the online push: {line[1:].decode(errors='replace')}")
        return line

    def bulk(self) -> bytes | None:
        """The next bulk-string reply (None for a nil: `$-1` in RESP2, `_` in RESP3)."""
        header = self._line()
        if header == b"_" or header == b"$-1":
            return None
        size = int(header[1:])
        while len(self.buffer) < self.pos + size + 2:
            self._fill()
        value, self.pos = self.buffer[self.pos:self.pos + size], self.pos + size + 2
        return value

    def skip(self, count: int) -> None:
        """Consume `count` one-line replies (integers), failing on any error reply."""
        for _ in range(count):
            self._line()


def _write_redis(store: FeatureStore, rows: EncodedRows) -> PushResult:
    from feast.infra.online_stores.helpers import _mmh3
    from feast.infra.online_stores.redis import RedisClient, RedisOnlineStore, RedisType
    from feast.utils import make_tzaware
    from google.protobuf.timestamp_pb2 import Timestamp

    config = store.config.online_store
    if config.redis_type == RedisType.redis_cluster or getattr(config, "client", RedisClient.redis) != RedisClient.redis:
        raise NotImplementedError("the fast online push writes to one Redis node through redis-py; for a cluster "
                                  "or the glide client use feast materialize")
    project = pa.scalar(store.project.encode(), pa.binary())
    keys = pc.binary_join_element_wise(rows.entity_keys, project, _NOTHING)
    ts_field = _constant_bulk(f"_ts:{rows.view}".encode())

    def stamp(t: datetime) -> bytes:
        proto = Timestamp()
        proto.FromDatetime(make_tzaware(t))
        return proto.SerializeToString()

    stamp_bytes = _per_distinct(rows.event_times, stamp, pa.binary())
    nanos = pc.cast(rows.event_times, pa.int64()).to_numpy() * 1000  # the same instant as the stamp, in ns
    fields = [(_constant_bulk(_mmh3(f"{rows.view}:{name}")), rows.values[name]) for name in rows.features]
    hset = pa.scalar(b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * (len(fields) + 1)), pa.binary())
    expire = pa.scalar(b"*3\r\n$6\r\nEXPIRE\r\n", pa.binary())
    ttl = _constant_bulk(str(config.key_ttl_seconds).encode()) if config.key_ttl_seconds else None
    resp = _Resp(RedisOnlineStore()._get_client(config))
    failed, written = True, 0
    try:
        for start in range(0, len(keys), BATCH_ENTITIES):
            batch = pa.array(np.arange(start, min(start + BATCH_ENTITIES, len(keys))))
            key_bulks = _bulk(keys.take(batch))
            if not config.skip_dedup:  # Feast keeps a stored value whose event time is the same or newer
                resp.send(_buffer([pa.scalar(b"*3\r\n$4\r\nHGET\r\n", pa.binary()), key_bulks, ts_field]))
                newer = []
                for i in batch.to_pylist():
                    stored = resp.bulk()
                    if stored is not None:
                        old = Timestamp()
                        old.ParseFromString(stored)
                        if nanos[i] <= old.seconds * 1_000_000_000 + old.nanos:
                            continue
                    newer.append(i)
                batch = pa.array(newer, pa.int64())
                key_bulks = _bulk(keys.take(batch))
            if not len(batch):
                continue
            pieces: list[pa.Array | pa.Scalar] = [hset, key_bulks, ts_field, _bulk(stamp_bytes.take(batch))]
            for field, values in fields:
                pieces += [field, _bulk(values.take(batch))]
            if ttl is not None:
                pieces += [expire, key_bulks, ttl]
            resp.send(_buffer(pieces))
            resp.skip(len(batch) * (2 if ttl is not None else 1))
            written += len(batch)
        failed = False
    finally:
        resp.close(failed)
    return PushResult(rows.view, len(keys), written * len(fields), len(keys) - written)
