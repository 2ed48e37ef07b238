"""The fast online push's encoders write exactly Feast's bytes; a failed SQLite push changes nothing."""

import math
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.types import Bool, Float32, Float64, Int32, Int64, String
from loopwise.features import online
from loopwise.features.store import FeastLocation, apply_repo, feature_store

REPO = Path(__file__).resolve().parent.parent / "feature_repo"

INT64S = [0, 1, 127, 128, 300, 16_383, 16_384, 2**31, 2**35 + 7, 2**63 - 1, -1, -300, -(2**63), None]
INT32S = [0, 1, 127, 128, 2**31 - 1, -1, -(2**31), None]
DOUBLES = [0.0, -0.0, 0.1, 1.0, 100.0, 1e-7, 1e16, 1e300, -2.5, math.inf, -math.inf, math.nan, None]
STRINGS = ["", "a", "Grüße, 包裹", "x" * 300, None]


def feasts(values: list, field: str, cast) -> tuple[list[bytes], list[str | None]]:  # type: ignore[no-untyped-def]
    """What Feast writes for each value: an empty Value for a null or NaN, else the proto and its value_text."""
    out_bytes, out_text = [], []
    for v in values:
        proto = Value() if v is None or (isinstance(v, float) and math.isnan(v)) else Value(**{field: cast(v)})
        out_bytes.append(proto.SerializeToString())
        out_text.append(extract_text_and_num(proto, False)[0])
    return out_bytes, out_text


@pytest.mark.parametrize(("values", "arrow_type", "dtype", "field", "cast"), [
    (INT64S, pa.int64(), Int64, "int64_val", int),
    (INT32S, pa.int32(), Int32, "int32_val", int),
    (DOUBLES, pa.float64(), Float64, "double_val", float),
    (DOUBLES, pa.float32(), Float32, "float_val", float),
    ([True, False, None], pa.bool_(), Bool, "bool_val", bool),
    (STRINGS, pa.string(), String, "string_val", str),
])
def test_encoded_values_are_feasts_bytes_and_texts(values, arrow_type, dtype, field, cast) -> None:
    array = pa.array(values, arrow_type)
    expected = feasts(array.to_pylist(), field, cast)  # float32 values as arrow holds them
    encoded, texts = online.encode_values(pa.chunked_array([array.slice(0, 3), array.slice(3)]), dtype)
    assert encoded.to_pylist() == expected[0]
    assert texts.to_pylist() == expected[1]


@pytest.mark.parametrize(("columns", "types"), [
    ({"customer_id": ["C000001", "", "Zoë-42"]}, {"customer_id": pa.string()}),
    ({"account": [0, -5, 2**40]}, {"account": pa.int64()}),
    ({"store": [1, 2, 3], "customer_id": ["a", "b", "c"]}, {"store": pa.int32(), "customer_id": pa.string()}),
])
def test_entity_keys_are_feasts_serialization(columns: dict, types: dict) -> None:
    table = pa.table({k: pa.array(v, types[k]) for k, v in columns.items()})
    field = {pa.string(): "string_val", pa.int64(): "int64_val", pa.int32(): "int32_val"}
    expected = [
        serialize_entity_key(EntityKey(join_keys=list(columns),
                                       entity_values=[Value(**{field[types[k]]: row[k]}) for k in columns]), 3)
        for row in table.to_pylist()]
    assert online.serialize_entity_keys(table, list(columns)) == expected


def test_a_null_join_key_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="customer_id"):
        online.serialize_entity_keys(pa.table({"customer_id": pa.array(["a", None])}), ["customer_id"])


def test_latest_rows_keep_the_newest_row_and_the_later_one_on_a_tie() -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    rows = pa.table({"customer_id": ["a", "b", "a", "a", "b"],
                     "ts": [t0 + timedelta(days=d) for d in (2, 1, 3, 3, 0)], "v": [1, 2, 3, 4, 5]})
    newest = online.latest_rows(rows, ["customer_id"], "ts").sort_by("customer_id")
    assert newest.column("v").to_pylist() == [4, 2]


def _order_rows(customers: int, day: int, value: int) -> pa.Table:
    ts = datetime(2026, 3, 2, tzinfo=UTC) + timedelta(days=day)
    n = customers
    ints = pa.array([value] * n, pa.int64())
    floats = pa.array([value / 10] * n, pa.float64())
    return pa.table({
        "customer_id": [f"C{i:06d}" for i in range(n)], "orders_7d": ints, "orders_30d": ints, "orders_90d": ints,
        "amount_eur_sum_30d": floats, "amount_eur_sum_90d": floats, "amount_eur_mean_90d": floats,
        "refund_rate_90d": floats, "cancel_rate_90d": floats, "days_since_last_order": ints, "tenure_days": ints,
        "event_timestamp": pa.array([ts] * n, pa.timestamp("us", "UTC")),
    })


def _dump(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute('SELECT * FROM "loopwise_customer_orders" ORDER BY entity_key, feature_name').fetchall()


def test_a_failed_sqlite_push_leaves_the_online_store_unchanged(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LOOPWISE__LAKE__URI", str(tmp_path / "lake"))
    store = feature_store(FeastLocation(REPO, tmp_path / "feast"))
    apply_repo(store, REPO)
    first = online.push(store, "customer_orders", _order_rows(300, 0, 1))
    assert (first.entities, first.values) == (300, 3000)
    before = _dump(tmp_path / "feast" / "online.db")
    with sqlite3.connect(tmp_path / "feast" / "online.db") as conn:  # the database refuses one row mid-push
        conn.execute('CREATE TRIGGER refuse BEFORE UPDATE ON "loopwise_customer_orders" '
                     "WHEN instr(NEW.entity_key, CAST('C000250' AS BLOB)) BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    with pytest.raises(sqlite3.IntegrityError, match="disk says no"):
        online.push(store, "customer_orders", _order_rows(300, 1, 2))
    assert _dump(tmp_path / "feast" / "online.db") == before  # not one of the 2,500 rows before it landed
    assert not list((tmp_path / "feast").glob(".loopwise-push-*"))  # the staging file is gone
    with sqlite3.connect(tmp_path / "feast" / "online.db") as conn:
        conn.execute("DROP TRIGGER refuse")
    online.push(store, "customer_orders", _order_rows(300, 1, 2))
    after = store.get_online_features(features=["customer_orders:orders_7d"],
                                      entity_rows=[{"customer_id": "C000250"}]).to_dict()
    assert after["orders_7d"] == [2]


def test_redis_push_sets_feasts_key_ttl(tmp_path: Path, monkeypatch, redis_url: str) -> None:
    import redis

    monkeypatch.setenv("LOOPWISE__LAKE__URI", str(tmp_path / "lake"))
    store = feature_store(FeastLocation(REPO, tmp_path / "feast", online_store="redis", redis_url=redis_url))
    apply_repo(store, REPO)
    store.config.online_store.key_ttl_seconds = 3600
    host, port = redis_url.split(":")
    client = redis.Redis(host=host, port=int(port))
    client.flushall()
    online.push(store, "customer_orders", _order_rows(50, 0, 1))
    ttls = {client.ttl(k) for k in client.keys("*")}
    assert len(client.keys("*")) == 50 and all(3500 < t <= 3600 for t in ttls)
    newer = online.push(store, "customer_orders", _order_rows(50, 1, 2))
    older = online.push(store, "customer_orders", _order_rows(50, 0, 3))
    assert (newer.skipped_older, older.skipped_older) == (0, 50)
    got = store.get_online_features(features=["customer_orders:orders_7d"], entity_rows=[{"customer_id": "C000007"}])
    assert got.to_dict()["orders_7d"] == [2]
