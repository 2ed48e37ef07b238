"""Feast's feature-server protocol, served fast: `/get-online-features`, `/push`, `/write-to-online-store`, `/health`.

Existing Feast clients work unchanged: the SDK with `online_store: type: remote`, or plain HTTP with Feast's
request bodies. Responses are column-major as in Feast's own server (`feast/feature_server.py`): `metadata.
feature_names` (join keys first), then one `results` entry per name with `values`, `statuses` and `event_timestamps`.
Errors carry Feast's body (a JSON string holding `module`, `class` and `message`), so the SDK raises Feast's own
exception class; the message names the field that is wrong.

Why not Feast's `get_online_features`: it resolves the request against the registry, converts every entity to
protobuf and builds a protobuf response on every call (`feast serve` measured here: ~300 requests/s, p99 1.7 s
at concurrency 8 on 2 cores; benchmarks/serving.py). Here the resolution is Feast's own
(`feast.utils._get_online_request_context`), done once per distinct request shape and kept until the registry
file changes; SQLite is read with one `SELECT ... WHERE entity_key IN (...)` (all views of the request in one
statement) on Feast's entity-key serialization, and the stored ValueProto bytes are decoded directly. Any other
online store (Redis in prod) is read through its own `online_read`, with the same cached resolution. What Feast
resolves differently (on-demand views, entityless views, versioned or aliased projections, precomputed services)
goes through Feast's `get_online_features` itself. Writes (`/push`, `/write-to-online-store`) are Feast's own,
after the request is checked.

Statuses: `PRESENT` and `NOT_FOUND` as Feast; `NULL_VALUE` for a stored null (Feast's Python server says
`PRESENT`; so it does, with no event time, for an entity Redis does not hold, which is `NOT_FOUND` here);
`OUTSIDE_MAX_AGE` for a value whose event time is older than `stale_after` (the value is still returned, as Feast
does for precomputed vectors past their TTL). Values and event times are Feast's.

The predict routes read through the same path in-process (`OnlineReader.entity_features`: the entities of a
model's requests that come together at once, values and statuses as `loopwise.features.retrieval` gives them
through Feast's SDK).

Each process keeps its own caches (the store, the resolved requests, a read-only SQLite connection), built on
first use and rebuilt after a fork: nothing needs to be shared between uvicorn workers.
"""

from __future__ import annotations

import asyncio
import calendar
import functools
import gc
import json
import logging
import math
import os
import sqlite3
import struct
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response
from fastapi import routing as fastapi_routing
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

EPOCH = "1970-01-01T00:00:00Z"  # Feast's text for an unset timestamp (join keys, entities not found)
PRESENT, NULL_VALUE, NOT_FOUND, OUTSIDE_MAX_AGE = "PRESENT", "NULL_VALUE", "NOT_FOUND", "OUTSIDE_MAX_AGE"
SQLITE_KEYS_PER_STATEMENT = 900  # stays under SQLite's bound-parameter limit on any build
MAX_CACHED_REQUESTS = 1024  # distinct request shapes resolved and kept per process
_FAST_KEY_TYPES = {"STRING": str, "INT64": int, "INT32": int}  # join key value types with a direct path


class Refused(Exception):
    """A request that will not be served, answered with Feast's error body and a message naming the field."""

    def __init__(self, status: int, message: str, feast_class: str = "FeastError") -> None:
        super().__init__(message)
        self.status, self.message, self.feast_class = status, message, feast_class

    def response(self) -> Response:
        # Feast's server answers `JSONResponse(content=exc.to_error_detail())`: a JSON string that holds a JSON
        # object. Its client decodes both layers and raises `feast.errors.<class>` with the message.
        detail = json.dumps({"module": "feast.errors", "class": self.feast_class, "message": self.message})
        return Response(json.dumps(detail), status_code=self.status, media_type="application/json")


def _invalid(message: str) -> Refused:
    return Refused(422, message)


# ---------------------------------------------------------------------------------------------------------------
# Values: ValueProto bytes as stored, decoded to what Feast's server writes into JSON


_DOUBLE, _FLOAT = struct.Struct("<d"), struct.Struct("<f")


def _finite(value: float) -> float | str:
    """Non-finite floats as protobuf's JSON strings, as Feast's server writes them (JSON has no NaN)."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _varint(data: bytes, start: int) -> tuple[int, int] | None:
    """A protobuf varint at `start`: (value, end), or None when it does not end inside `data`."""
    result = shift = 0
    for pos in range(start, min(len(data), start + 10)):
        byte = data[pos]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos + 1
        shift += 7
    return None


_INT_TAGS = {0x20: 64, 0x18: 32}  # int64_val, int32_val


def decode_value(data: bytes, json_safe: bool = True) -> Any:
    """A stored ValueProto as Feast's server writes it into JSON (`feast.feature_server_utils._value_to_native`),
    or with `json_safe=False` as Feast's SDK gives it in-process (`getattr(value, kind)`: NaN and infinities stay
    floats; what is not a scalar stays protobuf's), which is what a model is scored on.

    Scalars (double, float, int64, int32, bool, string, null) are read straight from the wire format (4x faster
    than parsing the proto); anything else, or bytes that are not exactly one such field, goes through protobuf.
    """
    size = len(data)
    if not size:
        return None
    tag = data[0]
    if tag == 0x29:  # double_val
        if size == 9:
            value = _DOUBLE.unpack_from(data, 1)[0]
            return value if value - value == 0 or not json_safe else _finite(value)  # inf - inf and nan - nan: nan
    elif tag in _INT_TAGS:
        if size == 2 and data[1] < 0x80:  # 0..127: most counts
            return data[1]
        read = _varint(data, 1)
        if read is not None and read[1] == size:
            value = read[0]
            if _INT_TAGS[tag] == 64:
                return value - (1 << 64) if value >= 1 << 63 else value
            return ((value + (1 << 31)) % (1 << 32)) - (1 << 31)  # negatives are sign-extended to 64 bits
    elif tag == 0x12:  # string_val
        read = _varint(data, 1)
        if read is not None and read[1] + read[0] == size:
            return data[read[1]:].decode("utf-8")
    elif tag == 0x38:  # bool_val
        if size == 2 and data[1] < 0x80:
            return data[1] != 0
    elif tag == 0x35 and size == 5:  # float_val
        value = _FLOAT.unpack_from(data, 1)[0]
        return _finite(value) if json_safe else value
    return _proto_value(data) if json_safe else _proto_native(data)


def _proto_value(data: bytes) -> Any:
    from feast.feature_server_utils import _value_to_native
    from feast.protos.feast.types.Value_pb2 import Value

    return _value_to_native(Value.FromString(data))


def _proto_native(data: bytes) -> Any:
    from feast.protos.feast.types.Value_pb2 import Value

    return _native(Value.FromString(data))


def _native(value: Any) -> Any:
    """A ValueProto's value as Feast's SDK response holds it (`loopwise.features.retrieval` reads it so)."""
    kind = value.WhichOneof("val")
    return getattr(value, kind) if kind and kind != "null_val" else None


def _native_value(data: bytes) -> Any:
    return decode_value(data, False)


@functools.lru_cache(maxsize=65_536)
def _sqlite_time(stored: Any) -> tuple[int, str]:
    """(epoch seconds, text) of a SQLite `event_ts`, exactly as Feast's SQLite store reads it back: its converter
    reads `datetime.fromtimestamp(int(v))` (local time) and labels that UTC. A store holds few distinct times."""
    seconds = calendar.timegm(datetime.fromtimestamp(int(stored)).timetuple())
    return seconds, _time_text(seconds, 0)


def _time_text(seconds: int, nanos: int) -> str:
    """RFC 3339 with Feast's adaptive precision (`feast.feature_server_utils._timestamp_to_str`)."""
    if seconds == 0 and nanos == 0:
        return EPOCH
    base = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos == 0:
        return base + "Z"
    if nanos % 1_000_000 == 0:
        return f"{base}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{base}.{nanos // 1_000:06d}Z"
    return f"{base}.{nanos:09d}Z"


# ---------------------------------------------------------------------------------------------------------------
# Requests: parsed and checked by hand (every error names its field, in Feast's body), then resolved once


def _parse(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as e:
        raise _invalid(f"the request body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise _invalid(f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def _flag(data: dict[str, Any], name: str, default: bool) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise _invalid(f"{name} must be true or false, got {json.dumps(value)}")
    return value


def _name(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise _invalid(f"{name} is required: a name (string), got {json.dumps(value)}")
    return value


def _columns(data: dict[str, Any], name: str) -> tuple[dict[str, list[Any]], int]:
    """A column-major table (name -> list of values, all of one length) and its row count."""
    columns = data.get(name)
    if not isinstance(columns, dict) or not columns:
        raise _invalid(f"{name} is required: an object of columns, name -> list of values "
                       f'(e.g. {{"<join key>": ["id-1", "id-2"]}}), got {json.dumps(columns)[:200]}')
    lengths = {}
    for key, values in columns.items():
        if not isinstance(values, list):
            raise _invalid(f"{name}.{key} must be a list of values (one per row), got {json.dumps(values)[:200]}")
        lengths[key] = len(values)
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise _invalid(f"{name}: the columns have unequal lengths ({described}); every column needs one value per row")
    rows = next(iter(lengths.values()))
    if rows == 0:
        raise _invalid(f"{name}: the columns are empty; send at least one row")
    return columns, rows


@dataclass(frozen=True)
class _ViewRead:
    """One feature view of a resolved request: where it is stored, which features, under which response names."""

    view: Any  # feast.FeatureView, with the request's projection
    table: str  # the online store's table (SQLite)
    join_keys: tuple[str, ...]  # the view's join keys
    features: tuple[str, ...]  # requested features, in request order
    names: tuple[str, ...]  # their names in the response
    metadata: dict[str, Any]  # feature_view_metadata entry
    encode: Callable[[tuple[Any, ...]], bytes] | None = None  # a row's join-key values -> Feast's entity key
    quoted: str = ""  # the table's name, quoted for SQL


@dataclass(frozen=True)
class _Plan:
    """A request shape (features or service, full_feature_names) resolved against the registry, once."""

    features: Any  # list of refs or the FeatureService: what Feast's own path is called with
    reads: tuple[_ViewRead, ...]
    join_keys: dict[str, str]  # request column (join key, or a deprecated entity name) -> join key in the response
    key_types: dict[str, str]  # join key -> Feast value type name, for the views read
    direct: bool  # False: read through Feast's get_online_features (on-demand, entityless, versioned, aliased)


def _feature_refs(data: dict[str, Any]) -> tuple[str | None, list[str]]:
    service = data.get("feature_service")
    features = data.get("features", [])
    if service is not None and (not isinstance(service, str) or not service):
        raise _invalid(f"feature_service must be a feature service's name, got {json.dumps(service)}")
    if service:
        return service, []
    if not isinstance(features, list):
        raise _invalid(f'features must be a list of "feature_view:feature", got {json.dumps(features)[:200]}')
    if not features:
        raise _invalid('name what to read: "feature_service" (a feature service\'s name) or "features" '
                       '(a list of "feature_view:feature")')
    for i, ref in enumerate(features):
        if not isinstance(ref, str) or ref.count(":") != 1 or ref.startswith(":") or ref.endswith(":"):
            raise _invalid(f'features[{i}] must be "feature_view:feature", got {json.dumps(ref)}')
    return None, features


def _resolve(store: FeatureStore, service_name: str | None, refs: list[str], full_names: bool,
             versioning: bool) -> _Plan:
    """Feast's own resolution of a request, checked first so that every unknown name is a 404 naming it."""
    from feast import utils as feast_utils
    from feast.errors import FeastError, FeatureServiceNotFoundException, FeatureViewNotFoundException
    from feast.infra.online_stores.helpers import compute_table_id
    from feast.infra.online_stores.sqlite import _quote_id
    from feast.on_demand_feature_view import OnDemandFeatureView

    registry, project = store.registry, store.project
    features: Any
    if service_name is not None:
        try:
            features = registry.get_feature_service(service_name, project, allow_cache=True)
        except FeatureServiceNotFoundException:
            known = sorted(s.name for s in registry.list_feature_services(project, allow_cache=True))
            raise Refused(404, f"feature_service: no feature service named {service_name!r} in project {project} "
                               f"(feature services: {', '.join(known) or 'none'})",
                          "FeatureServiceNotFoundException") from None
    else:
        for i, ref in enumerate(refs):
            view_name, feature = ref.split(":")
            if "@" in view_name:
                continue  # a versioned reference: Feast resolves and checks it
            try:
                view = registry.get_any_feature_view(view_name, project, allow_cache=True)
            except FeatureViewNotFoundException:
                known = sorted(v.name for v in registry.list_all_feature_views(project, allow_cache=True))
                raise Refused(404, f"features[{i}]: no feature view named {view_name!r} in project {project} "
                                   f"(feature views: {', '.join(known) or 'none'})",
                              "FeatureViewNotFoundException") from None
            names = [f.name for f in view.features]
            if feature not in names:
                raise Refused(404, f"features[{i}]: feature view {view_name!r} has no feature {feature!r} "
                                   f"(its features: {', '.join(names)})", "FeastObjectNotFoundException")
        features = list(refs)
    try:
        (refs_resolved, on_demand, entity_to_join_key, _, join_keys, grouped, _names, request_data,
         entityless) = feast_utils._get_online_request_context(registry, project, features, full_names)
    except FeastError as e:  # a name collision, a view that cannot serve
        field_name = "feature_service" if service_name is not None else "features"
        raise Refused(422, f"{field_name}: {e}", type(e).__name__) from None
    except (KeyError, ValueError) as e:
        field_name = "feature_service" if service_name is not None else "features"
        raise _invalid(f"{field_name}: {e}") from None

    position = {ref: i for i, ref in enumerate(refs_resolved)}
    reads = []
    direct = not (on_demand or request_data or entityless or getattr(features, "precompute_online", False))
    for view, requested in grouped:
        projection = view.projection
        if isinstance(view, OnDemandFeatureView) or projection.version_tag is not None or projection.join_key_map:
            direct = False
        view_name = projection.name_to_use()
        # Feast lists a view's features in set order (it varies per process); here, in the request's order.
        requested = sorted(requested, key=lambda f, v=view_name: position.get(f"{v}:{f}", len(position)))
        names = tuple(f"{view_name}__{f}" if full_names else f for f in requested)
        version = getattr(view, "current_version_number", 0) or 0
        reads.append(_ViewRead(
            view=view, table=compute_table_id(project, view, versioning),
            join_keys=tuple(getattr(view, "join_keys", ())), features=tuple(requested), names=names,
            metadata={"name": projection.name_alias or projection.name, **({"version": version} if version else {})}))
    key_types = {c.name: c.dtype.to_value_type().name for r in reads for c in getattr(r.view, "entity_columns", [])}
    if any(t not in _FAST_KEY_TYPES for t in key_types.values()) or any(not r.join_keys for r in reads):
        direct = False
    if direct:
        reads = [replace(r, encode=entity_key_encoder(r.join_keys, key_types), quoted=_quote_id(r.table))
                 for r in reads]
    request_columns = {k: k for k in join_keys} | {name: key for name, key in entity_to_join_key.items()
                                                    if name not in join_keys}
    return _Plan(features, tuple(reads), request_columns, key_types, direct)


def _entity_columns(plan: _Plan, entities: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The request's join-key columns (entity names mapped to their join keys), type-checked; other columns
    are ignored, as Feast does (they may be request data of an on-demand view)."""
    columns: dict[str, list[Any]] = {}
    for name, values in entities.items():
        key = plan.join_keys.get(name)
        if key is None:
            continue
        if key in columns:
            raise _invalid(f"entities.{name}: the join key {key} is given twice (by its name and its entity's)")
        kind = plan.key_types.get(key)
        expected = _FAST_KEY_TYPES.get(kind or "")
        for i, value in enumerate(values):
            if expected is str and not isinstance(value, str):
                raise _invalid(f"entities.{name}[{i}]: {key} is a STRING join key, got {json.dumps(value)}")
            if expected is int and (not isinstance(value, int) or isinstance(value, bool)):
                raise _invalid(f"entities.{name}[{i}]: {key} is an {kind} join key, got {json.dumps(value)}")
            if expected is None and (value is None or isinstance(value, list | dict)):
                raise _invalid(f"entities.{name}[{i}]: a join key's value must be a scalar, got {json.dumps(value)}")
        if kind in ("INT64", "INT32"):
            bound = 1 << (63 if kind == "INT64" else 31)
            for i, value in enumerate(values):
                if not -bound <= value < bound:
                    raise _invalid(f"entities.{name}[{i}]: {value} is out of range for the {kind} join key {key}")
        columns[key] = values
    for read in plan.reads:
        missing = [k for k in read.join_keys if k not in columns]
        if missing:
            raise _invalid(f"entities: the join key {', '.join(missing)} is missing; feature view "
                           f"{read.view.projection.name_to_use()} is read by {', '.join(read.join_keys)}")
    return columns


# ---------------------------------------------------------------------------------------------------------------
# The process's state: the store, the resolved requests, the SQLite connection


class _RegistryWatch:
    """Tells when the registry changed: a local registry file by its stat, any other registry by its cache TTL."""

    def __init__(self, store: FeatureStore) -> None:
        config = store.config.registry
        path = str(getattr(config, "path", "") or "")
        local = getattr(config, "registry_type", "file") == "file" and "://" not in path and path
        if local and not Path(path).is_absolute() and store.repo_path:
            path = str(Path(store.repo_path) / path)
        self.path = Path(path) if local else None
        self.ttl = float(getattr(config, "cache_ttl_seconds", 600) or 0)
        self.seen: Any = self._signature()

    def _signature(self) -> Any:
        if self.path is None:
            return time.monotonic()
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def changed(self) -> Any:
        """The registry's new signature when it changed since `seen`, else None."""
        if self.path is None:
            now = time.monotonic()
            return now if self.ttl > 0 and now - self.seen >= self.ttl else None
        signature = self._signature()
        return None if signature == self.seen else signature


@dataclass
class _State:
    store: Any  # feast.FeatureStore
    watch: _RegistryWatch
    sqlite_path: Path | None  # the SQLite online store read directly; None: another store
    versioning: bool
    plans: dict[tuple[Any, ...], _Plan] = field(default_factory=dict)
    conn: sqlite3.Connection | None = None
    conn_file: tuple[int, int] = (0, 0)  # (device, inode) of the file `conn` reads

    def fresh(self) -> None:
        """Reload the registry and forget every resolved request when the registry changed (checked on every
        request: one stat). A reload that fails (a registry file caught mid-write) is tried again next time."""
        signature = self.watch.changed()
        if signature is not None:
            self.store.refresh_registry()
            self.plans.clear()
            self.watch.seen = signature
            log.info("feature server: the registry changed; reloaded")

    def plan(self, service: str | None, refs: list[str], full_names: bool) -> _Plan:
        key = (service, tuple(refs), full_names)
        plan = self.plans.get(key)
        if plan is None:
            plan = _resolve(self.store, service, refs, full_names, self.versioning)
            if len(self.plans) >= MAX_CACHED_REQUESTS:
                self.plans.clear()
            self.plans[key] = plan
        return plan

    def connection(self) -> sqlite3.Connection:
        """A read-only connection to the SQLite online store, reopened when the file is replaced (a teardown and
        a new apply give a new file; a connection would keep reading the deleted one)."""
        assert self.sqlite_path is not None
        try:
            stat = self.sqlite_path.stat()
        except FileNotFoundError:
            raise Refused(503, f"the SQLite online store {self.sqlite_path} does not exist: apply the feature "
                               "repository and push or materialize features first") from None
        if self.conn is None or self.conn_file != (stat.st_dev, stat.st_ino):
            if self.conn is not None:
                self.conn.close()
            # Read-only and autocommit: every statement sees the latest committed write, and nothing here writes.
            # Reads run on the event loop: a read takes ~0.1 ms, less than a hop to a thread and back. They wait
            # only while a writer commits (SQLite's lock), rarely and briefly.
            self.conn = sqlite3.connect(f"{self.sqlite_path.as_uri()}?mode=ro", uri=True, isolation_level=None,
                                        check_same_thread=False)
            self.conn_file = (stat.st_dev, stat.st_ino)
        return self.conn


def _state_for(store: FeatureStore) -> _State:
    config = store.config
    online = config.online_store
    sqlite_path = None
    if type(online).__name__ == "SqliteOnlineStoreConfig" and not getattr(online, "vector_enabled", False):
        from feast.infra.online_stores.sqlite import SqliteOnlineStore

        sqlite_path = Path(SqliteOnlineStore._get_db_path(config)).resolve()
    versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
    return _State(store, _RegistryWatch(store), sqlite_path, versioning)


# ---------------------------------------------------------------------------------------------------------------
# Reads


_KEY_VALUE_TYPES = {"STRING": 2, "INT32": 3, "INT64": 4}  # feast ValueType numbers of the join keys read directly
_U32 = struct.Struct("<I")


def entity_key_encoder(join_keys: tuple[str, ...], key_types: dict[str, str]) -> Callable[[tuple[Any, ...]], bytes]:
    """Feast's entity-key serialization (version 3, `feast.infra.key_encoding_utils.serialize_entity_key`) of one
    row's join-key values, without a protobuf object per row: keys sorted by name, then each value as
    type, length, bytes (tests compare it with Feast's own function)."""
    by_name = sorted(range(len(join_keys)), key=lambda i: join_keys[i])
    header = _U32.pack(len(join_keys)) + b"".join(
        _U32.pack(2) + _U32.pack(len(join_keys[i].encode())) + join_keys[i].encode() for i in by_name)
    kinds = [key_types[join_keys[i]] for i in by_name]
    if len(by_name) == 1 and kinds[0] == "STRING":
        prefix = header + _U32.pack(2)

        def one_string(values: tuple[Any, ...]) -> bytes:
            data = values[0].encode()
            return prefix + _U32.pack(len(data)) + data
        return one_string
    packs = {"INT64": struct.Struct("<IIq").pack, "INT32": struct.Struct("<IIi").pack}

    def encode(values: tuple[Any, ...]) -> bytes:
        parts = [header]
        for i, kind in zip(by_name, kinds, strict=True):
            if kind == "STRING":
                data = values[i].encode()
                parts.append(_U32.pack(2) + _U32.pack(len(data)) + data)
            else:
                parts.append(packs[kind](_KEY_VALUE_TYPES[kind], 8 if kind == "INT64" else 4, values[i]))
        return b"".join(parts)
    return encode


def _keys(read: _ViewRead, columns: dict[str, list[Any]], rows: int) -> list[bytes]:
    encode = read.encode
    return [encode(row) for row in zip(*(columns[k] for k in read.join_keys), strict=True)] if rows else []


# One stored entity of one view: [event_ts as stored, {feature: value bytes}].
_Stored = list[Any]


def _missing_table(read: _ViewRead) -> Refused:
    return Refused(503, f"the online store has no table {read.table} for feature view {read.view.name}: apply the "
                        "feature repository (feast apply), then push or materialize the view")


def _read_sqlite(state: _State, reads: tuple[_ViewRead, ...], keys: list[list[bytes]]) -> list[dict[bytes, _Stored]]:
    """Every stored feature of the requested entities, per view: one `SELECT ... WHERE entity_key IN (...)`
    for all views (UNION ALL) when the keys fit one statement, else one per view and 900 entities."""
    conn = state.connection()
    unique = [list(dict.fromkeys(k)) for k in keys]
    found: list[dict[bytes, _Stored]] = [{} for _ in reads]
    if sum(len(u) for u in unique) <= SQLITE_KEYS_PER_STATEMENT:
        batches = [[(i, u) for i, u in enumerate(unique)]]
    else:
        batches = [[(i, u[s:s + SQLITE_KEYS_PER_STATEMENT])] for i, u in enumerate(unique)
                   for s in range(0, len(u), SQLITE_KEYS_PER_STATEMENT)]
    for batch in batches:
        sql = " UNION ALL ".join(
            f"SELECT {i}, entity_key, feature_name, value, event_ts FROM {reads[i].quoted} "
            f"WHERE entity_key IN ({','.join('?' * len(chunk))})" for i, chunk in batch)
        try:
            cursor = conn.execute(sql, [key for _, chunk in batch for key in chunk])
        except sqlite3.OperationalError as e:
            missing = next((reads[i] for i, _ in batch if reads[i].table in str(e)), None)
            if "no such table" in str(e) and missing is not None:
                raise _missing_table(missing) from None
            raise
        for i, key, name, value, ts in cursor:
            entry = found[i].get(key)
            if entry is None:
                found[i][key] = [ts, {name: value}]
            else:
                # Feast reports one event time per entity and view (that of the last row it reads); every write
                # stores one time for all of a view's features, and where they differ the newest is the answer.
                if ts > entry[0]:
                    entry[0] = ts
                entry[1][name] = value
    return found


def _read_store(state: _State, read: _ViewRead, keys: list[bytes],
                native: bool = False) -> dict[bytes, tuple[int, str, dict[str, Any]]]:
    """Any other online store (Redis in prod) through its own `online_read`, with the cached resolution; values as
    Feast's server writes them into JSON, or (`native`) as its SDK gives them in-process."""
    from feast.feature_server_utils import _value_to_native
    from feast.infra.key_encoding_utils import deserialize_entity_key
    from google.protobuf.timestamp_pb2 import Timestamp

    unique = list(dict.fromkeys(keys))
    protos = [deserialize_entity_key(k, 3) for k in unique]
    store = state.store
    rows = store._get_provider().online_store.online_read(config=store.config, table=read.view, entity_keys=protos,
                                                          requested_features=list(read.features))
    out = {}
    for key, (ts, values) in zip(unique, rows, strict=True):
        if values is None:
            continue
        stamp = Timestamp()
        if ts is not None:
            stamp.FromDatetime(ts)
        if stamp.seconds == stamp.nanos == 0 and not any(v.WhichOneof("val") for v in values.values()):
            # Redis answers an unknown entity with empty values and no event time (Feast reports them PRESENT):
            # nothing is stored for it, so it is NOT_FOUND, as the SQLite store says.
            continue
        convert = _native if native else _value_to_native
        out[key] = (stamp.seconds, _time_text(stamp.seconds, stamp.nanos),
                    {name: convert(v) for name, v in values.items()})
    return out


_Found = list[dict[bytes, tuple[int, str, Any]]]  # per view of a plan: entity key -> (event seconds, text, values)


def _read_direct(state: _State, plan: _Plan, keys: list[list[bytes]], native: bool = False) -> tuple[_Found, Any]:
    """What the store holds for the entity keys of a direct plan, per view, and how to decode one stored value.
    SQLite is read here, on the caller's thread (the event loop: ~0.1 ms); any other store through `_read_store`."""
    if state.sqlite_path is not None:
        stamp = _sqlite_time
        found = [{k: (*stamp(ts), values) for k, (ts, values) in stored.items()}
                 for stored in _read_sqlite(state, plan.reads, keys)]
        return found, _native_value if native else decode_value
    return [_read_store(state, read, k, native) for read, k in zip(plan.reads, keys, strict=True)], _identity


def _columns_of(read: _ViewRead, entries: list[tuple[int, str, dict[str, Any]] | None], decode: Callable[[Any], Any],
                oldest: float) -> tuple[list[tuple[Any, ...]], list[tuple[str, ...]], list[tuple[str, ...]]]:
    """One view's values, statuses and event times, column-major (one tuple per feature), as Feast fills them."""
    features = read.features
    width = len(features)
    absent = (None,) * width, (NOT_FOUND,) * width, (EPOCH,) * width
    values_rows, status_rows, stamp_rows = [], [], []
    for entry in entries:
        if entry is None:
            values, statuses, stamps = absent
        else:
            seconds, text, stored = entry
            values = tuple(decode(stored[f]) if f in stored else None for f in features)
            if 0 < seconds < oldest:
                statuses = tuple(OUTSIDE_MAX_AGE if f in stored else NOT_FOUND for f in features)
            else:
                statuses = tuple(NOT_FOUND if f not in stored else NULL_VALUE if v is None else PRESENT
                                 for f, v in zip(features, values, strict=True))
            stamps = (text,) * width
        values_rows.append(values)
        status_rows.append(statuses)
        stamp_rows.append(stamps)
    return (list(zip(*values_rows, strict=True)), list(zip(*status_rows, strict=True)),
            list(zip(*stamp_rows, strict=True)))


def _encode_json(payload: dict[str, Any]) -> bytes:
    # The same encoding as Feast's JSONResponse: compact, UTF-8, no NaN (non-finite floats are strings already).
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, check_circular=False,
                      separators=(",", ":")).encode()


def _respond(payload: dict[str, Any]) -> Response:
    return Response(_encode_json(payload), media_type="application/json")


def _identity(value: Any) -> Any:
    return value


async def _online_features(state: _State, data: dict[str, Any], stale_after: timedelta) -> Response:
    service, refs = _feature_refs(data)
    full_names = _flag(data, "full_feature_names", False)
    with_versions = _flag(data, "include_feature_view_version_metadata", False)
    entities, rows = _columns(data, "entities")
    state.fresh()
    plan = state.plan(service, refs, full_names)
    columns = _entity_columns(plan, entities)
    oldest = time.time() - stale_after.total_seconds()
    if not plan.direct:
        return await _through_feast(state, plan, entities, full_names, with_versions, oldest)

    keys = [_keys(read, columns, rows) for read in plan.reads]
    if state.sqlite_path is not None:
        found, decode = _read_direct(state, plan, keys)
    else:
        found, decode = await run_in_threadpool(_read_direct, state, plan, keys)
    names = list(columns)
    results = [{"values": values, "statuses": (PRESENT,) * rows, "event_timestamps": (EPOCH,) * rows}
               for values in columns.values()]
    for read, view_keys, view_found in zip(plan.reads, keys, found, strict=True):
        get = view_found.get
        values, statuses, stamps = _columns_of(read, [get(k) for k in view_keys], decode, oldest)
        names.extend(read.names)
        results.extend({"values": v, "statuses": s, "event_timestamps": t}
                       for v, s, t in zip(values, statuses, stamps, strict=True))
    metadata: dict[str, Any] = {"feature_names": names}
    if with_versions:
        metadata["feature_view_metadata"] = [r.metadata for r in plan.reads]
    return _respond({"results": results, "metadata": metadata})


async def _through_feast(state: _State, plan: _Plan, entities: dict[str, list[Any]], full_names: bool,
                         with_versions: bool, oldest: float) -> Response:
    """Feast's own get_online_features, for what it resolves differently; statuses refined the same way."""
    from feast.errors import FeastError
    from feast.feature_server_utils import convert_response_to_dict

    try:
        response = await run_in_threadpool(
            state.store.get_online_features, features=plan.features, entity_rows=entities,
            full_feature_names=full_names, include_feature_view_version_metadata=with_versions)
    except FeastError as e:
        raise Refused(e.http_status_code() if e.http_status_code() < 500 else 422, str(e), type(e).__name__) from None
    payload = convert_response_to_dict(response.proto)
    keys = set(plan.join_keys.values())
    for name, result in zip(payload["metadata"]["feature_names"], payload["results"], strict=True):
        if name in keys:
            continue
        stamps = result.get("event_timestamps") or [EPOCH] * len(result["values"])
        for i, (value, status, stamp) in enumerate(zip(result["values"], result["statuses"], stamps, strict=True)):
            if status == PRESENT:
                seconds = 0 if stamp == EPOCH else calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
                result["statuses"][i] = (OUTSIDE_MAX_AGE if 0 < seconds < oldest
                                         else NULL_VALUE if value is None else PRESENT)
    return _respond(payload)


# ---------------------------------------------------------------------------------------------------------------
# In-process reads: the same path for a model's features (the predict route reads a wave of requests at once)


# Feast's statuses as `loopwise.features.retrieval` reports them from Feast's SDK: a stored null is present (Feast's
# SDK says PRESENT) with no value; an absent feature is missing; an old value is stale and kept.
_SERVING_STATUS = {PRESENT: "present", NULL_VALUE: "present", OUTSIDE_MAX_AGE: "stale", NOT_FOUND: "missing"}


class OnlineReader:
    """The fast online read of one store, for this process (a forked worker builds its own state): shared by the
    `/get-online-features` route and the predict routes, so that there is one implementation of the read."""

    def __init__(self, store: Callable[[], FeatureStore]) -> None:
        self._store = store
        self._current: dict[int, _State] = {}

    def state(self) -> _State:
        pid = os.getpid()
        found = self._current.get(pid)
        if found is None:
            self._current.clear()
            found = self._current[pid] = _state_for(self._store())
        return found

    async def entity_features(self, service: str, rows: list[dict[str, Any]],
                              stale_after: timedelta) -> list[Any]:
        """A feature service's values for many entities (their join keys) in one read, as `EntityFeatures` with
        exactly the values and statuses `loopwise.features.retrieval.online_features` gives through Feast's SDK."""
        from loopwise.features.retrieval import EntityFeatures, FeatureValue, Status, online_features

        if not rows:
            return []
        state = self.state()
        state.fresh()
        plan = state.plan(service, [], False)
        if not plan.direct:
            return await asyncio.to_thread(online_features, state.store, service, rows, stale_after)
        columns = _entity_columns(plan, {k: [row[k] for row in rows] for k in rows[0]})
        keys = [_keys(read, columns, len(rows)) for read in plan.reads]
        oldest = time.time() - stale_after.total_seconds()
        if state.sqlite_path is not None:
            found, decode = _read_direct(state, plan, keys, native=True)
        else:
            found, decode = await asyncio.to_thread(_read_direct, state, plan, keys, True)
        out: list[dict[str, Any]] = [{} for _ in rows]
        statuses = {name: Status(value) for name, value in _SERVING_STATUS.items()}
        for read, view_keys, view_found in zip(plan.reads, keys, found, strict=True):
            get = view_found.get
            values, states, _ = _columns_of(read, [get(k) for k in view_keys], decode, oldest)
            for name, column, status_column in zip(read.names, values, states, strict=True):
                for features, value, status in zip(out, column, status_column, strict=True):
                    features[name] = FeatureValue(value, statuses[status])
        return [EntityFeatures(dict(row), features) for row, features in zip(rows, out, strict=True)]


# ---------------------------------------------------------------------------------------------------------------
# Writes: Feast's own path, after the request is checked


def _frame(columns: dict[str, list[Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(columns)


def _require_columns(field_name: str, columns: dict[str, list[Any]], views: list[Any]) -> None:
    for view in views:
        source = view.batch_source
        needed = list(view.join_keys) + [f.name for f in view.features]
        needed += [c for c in (getattr(source, "timestamp_field", ""), getattr(source, "created_timestamp_column", ""))
                   if c]
        missing = [c for c in needed if c not in columns]
        if missing:
            raise _invalid(f"{field_name}: missing column {', '.join(missing)} (feature view {view.name} needs "
                           f"{', '.join(needed)})")


async def _write(call: Callable[[], None], field_name: str) -> Response:
    from feast.errors import FeastError

    try:
        await run_in_threadpool(call)
    except FeastError as e:
        raise Refused(e.http_status_code() if e.http_status_code() < 500 else 422, f"{field_name}: {e}",
                      type(e).__name__) from None
    except (ValueError, TypeError) as e:  # a value Feast cannot convert to the feature's type (pyarrow's errors too)
        raise _invalid(f"{field_name}: {e}") from None
    return Response(status_code=200)


async def _write_to_online_store(state: _State, data: dict[str, Any]) -> Response:
    from feast.errors import FeatureViewNotFoundException

    view_name = _name(data, "feature_view_name")
    columns, _ = _columns(data, "df")
    allow_cache = _flag(data, "allow_registry_cache", True)
    transform = _flag(data, "transform_on_write", True)
    state.fresh()
    store = state.store
    try:
        view = store.registry.get_any_feature_view(view_name, store.project, allow_cache=True)
    except FeatureViewNotFoundException:
        known = sorted(v.name for v in store.registry.list_all_feature_views(store.project, allow_cache=True))
        raise Refused(404, f"feature_view_name: no feature view named {view_name!r} in project {store.project} "
                           f"(feature views: {', '.join(known) or 'none'})", "FeatureViewNotFoundException") from None
    if getattr(view, "batch_source", None) is not None and hasattr(view, "join_keys"):
        _require_columns("df", columns, [view])
    frame = _frame(columns)
    return await _write(lambda: store.write_to_online_store(feature_view_name=view_name, df=frame,
                                                            allow_registry_cache=allow_cache,
                                                            transform_on_write=transform), "df")


def _offline_writes_supported(store: FeatureStore) -> bool:
    from feast.infra.offline_stores.offline_store import OfflineStore

    offline = store._get_provider().offline_store
    return type(offline).offline_write_batch is not OfflineStore.offline_write_batch


async def _push(state: _State, data: dict[str, Any]) -> Response:
    from feast.data_source import PushMode, PushSource

    source_name = _name(data, "push_source_name")
    columns, _ = _columns(data, "df")
    allow_cache = _flag(data, "allow_registry_cache", True)
    transform = _flag(data, "transform_on_write", True)
    modes = {"online": PushMode.ONLINE, "offline": PushMode.OFFLINE, "online_and_offline": PushMode.ONLINE_AND_OFFLINE}
    to = data.get("to", "online")
    if to not in modes:
        raise _invalid(f'to must be one of "online", "offline", "online_and_offline", got {json.dumps(to)}')
    state.fresh()
    store = state.store
    views = [v for v in store.list_feature_views(allow_cache=True) + store.list_stream_feature_views(allow_cache=True)
             if isinstance(v.stream_source, PushSource) and v.stream_source.name == source_name]
    if not views:
        known = sorted({v.stream_source.name for v in store.list_feature_views(allow_cache=True)
                        if isinstance(v.stream_source, PushSource)})
        raise Refused(422, f"push_source_name: no feature view reads a push source named {source_name!r} "
                           f"(push sources: {', '.join(known) or 'none'})", "PushSourceNotFoundException")
    if to != "online" and not _offline_writes_supported(store):
        offline = type(store._get_provider().offline_store).__name__
        raise _invalid(f'to: {json.dumps(to)} is not supported: the offline store {offline} takes no writes (the lake is '
                       'written by the pipelines); push with "to": "online"')
    _require_columns("df", columns, views)
    frame = _frame(columns)
    return await _write(lambda: store.push(push_source_name=source_name, df=frame, allow_registry_cache=allow_cache,
                                           to=modes[to], transform_on_write=transform), "df")


# ---------------------------------------------------------------------------------------------------------------
# The router


def _schema(model: str) -> dict[str, Any]:
    """Feast's own request model as the OpenAPI body (the handlers parse the body themselves)."""
    from feast import feature_server

    schema = getattr(feature_server, model).model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _dependencies_apply(route: APIRoute) -> bool:
    """Whether FastAPI would run dependencies for this route (its own, or its router's or app's once included);
    True whenever that cannot be told, so that a dependency (access control) is never skipped."""
    var = getattr(fastapi_routing, "_effective_route_context_var", None)
    if var is None:  # a FastAPI whose includes cannot be inspected this way
        return True
    context = var.get()
    effective = context if context is not None and getattr(context, "original_route", None) is route else route
    dependant = getattr(effective, "dependant", None)
    return dependant is None or bool(dependant.dependencies)


class _LeanRoute(APIRoute):
    """A FastAPI route whose handler is the endpoint itself when no dependency applies to it.

    The endpoints take the Request and return a Response; FastAPI's request handler around them (dependency
    solving, body and response checks) costs ~30 us a request here, a tenth of a whole feature read. Where a
    router or app adds dependencies (access control), FastAPI's own handler runs them as for any route.
    """

    def get_route_handler(self) -> Callable[[Request], Any]:
        # Every endpoint here is `async def endpoint(request: Request) -> Response`.
        if _dependencies_apply(self):
            return super().get_route_handler()
        return self.endpoint


def _warm(state: Callable[[], _State]) -> None:
    """Load the store and registry, resolve every feature service (both name styles), open the online store."""
    s = state()
    for service in s.store.registry.list_feature_services(s.store.project, allow_cache=True):
        for full_names in (False, True):
            try:
                s.plan(service.name, [], full_names)
            except Refused as refused:  # e.g. a name collision without full names: the request will say so
                log.info("feature server: %s not resolved ahead: %s", service.name, refused.message)
    if s.sqlite_path is not None and s.sqlite_path.exists():
        s.connection()
    # What is alive now (Feast, pandas, protobuf and their modules: ~300k objects) lives as long as the process.
    # A full collection walks all of it: 140-200 ms here, a p99 spike every few thousand requests. Frozen, the
    # collector skips it; everything created later is collected as usual.
    gc.freeze()


def feature_router(store: Callable[[], FeatureStore] | OnlineReader, stale_after: timedelta, *,
                   write_dependencies: Sequence[Any] = ()) -> APIRouter:
    """Feast's feature-server endpoints over `store()`, called once per process (at startup, by the router's
    lifespan, or on the first request), or over an `OnlineReader` the app also reads with. A value older than
    `stale_after` is answered with status OUTSIDE_MAX_AGE.

    Include it in any FastAPI app (`app.include_router(feature_router(...))`); dependencies given to
    `include_router` (access control) run for every endpoint, and `write_dependencies` (e.g. an operator role)
    for `/push` and `/write-to-online-store` only.
    """
    state = (store if isinstance(store, OnlineReader) else OnlineReader(store)).state

    @asynccontextmanager
    async def warm(app: Any) -> AsyncIterator[None]:
        # Each worker loads the registry and resolves every feature service before it takes traffic: the first
        # request would otherwise pay ~1 s (measured: a p99 of 0.6 s with two workers).
        try:
            await asyncio.to_thread(_warm, state)
        except Exception:  # noqa: BLE001 - a store that cannot be read yet is reported by every request instead
            log.exception("feature server: warming up failed; each request will try again")
        yield

    router = APIRouter(tags=["features"], route_class=_LeanRoute, lifespan=warm)

    async def answer(request: Request, handle: Callable[[_State, dict[str, Any]], Any]) -> Response:
        try:
            return await handle(state(), _parse(await request.body()))
        except Refused as refused:
            return refused.response()

    @router.post("/get-online-features", openapi_extra=_schema("GetOnlineFeaturesRequest"))
    async def get_online_features(request: Request) -> Response:
        """Feature values for entities, column-major, as Feast's feature server answers."""
        return await answer(request, lambda s, d: _online_features(s, d, stale_after))

    @router.post("/push", openapi_extra=_schema("PushFeaturesRequest"), dependencies=list(write_dependencies))
    async def push(request: Request) -> Response:
        """Rows for the feature views that read a push source, into the online store."""
        return await answer(request, _push)

    @router.post("/write-to-online-store", openapi_extra=_schema("WriteToFeatureStoreRequest"),
                 dependencies=list(write_dependencies))
    async def write_to_online_store(request: Request) -> Response:
        """Rows of one feature view, into the online store."""
        return await answer(request, _write_to_online_store)

    @router.get("/health")
    async def health(request: Request) -> Response:
        """200 when the registry can be read, 503 otherwise (as Feast's server)."""
        try:
            s = state()
            s.store.registry.list_projects(allow_cache=True)
        except Exception:  # noqa: BLE001 - any failure to read the registry is "unhealthy", by Feast's contract
            log.exception("feature server: health check failed")
            return Response(status_code=503)
        return Response(status_code=200)

    return router
