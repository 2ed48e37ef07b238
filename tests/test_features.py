"""The feature store: feature tables, point-in-time retrieval through Feast, the fast online push."""

import shutil
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from loopwise.features import stages as features
from loopwise.features.retrieval import Status, online_features
from loopwise.features.store import FeastLocation, apply_repo, feature_store
from loopwise.lake.tables import DateRange, Lake, overwrite_partitions_arrow
from loopwise.landing import zone
from loopwise.pipelines import stages
from supportdesk import USE_CASE
from supportdesk import features as tables
from supportdesk.features import ORDER_FEATURES, SUPPORT_FEATURES
from supportdesk.models import TICKET_ESCALATION

from tests.conftest import DAY1, DAY2

REPO = Path(__file__).resolve().parent.parent / "feature_repo"
UTC = UTC
BOTH = DateRange(DAY1, DAY2)
ORDERS_TABLE, SUPPORT_TABLE = USE_CASE.feature_table(ORDER_FEATURES), USE_CASE.feature_table(SUPPORT_FEATURES)
SERVICE = TICKET_ESCALATION.feature_service  # escalation_v1: both views
STALE_AFTER = timedelta(hours=48)  # the profile's default features.stale_after_hours


def customers(*ids: str) -> list[dict[str, str]]:
    """Entity rows of the customer entity, as a serving call sends them."""
    return [{"customer_id": c} for c in ids]


@pytest.fixture(scope="module")
def lake_with_features(tmp_path_factory: pytest.TempPathFactory, spark) -> Lake:
    """Two landed days through silver and both feature tables (built once for the module)."""
    root = tmp_path_factory.mktemp("features")
    for day in (DAY1, DAY2):
        zone.land_day(USE_CASE, root / "landing", day, 150, seed=12)
    lake = Lake(str(root / "lake"))
    for source in USE_CASE.sources:
        stages.ingest_raw(lake, root / "landing", source.contract, BOTH)
        stages.build_bronze(spark, lake, source.contract, BOTH, 0.05)
        stages.build_silver(spark, lake, source, BOTH)
    features.build_feature_table(spark, lake, ORDERS_TABLE, BOTH)
    features.build_feature_table(spark, lake, SUPPORT_TABLE, BOTH)
    return lake


def store_for(tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch, **online: str):
    """A Feast store with its own registry and online store, reading `lake` (the repo reads the profile)."""
    monkeypatch.setenv("LOOPWISE__LAKE__URI", lake.uri)  # apply_repo imports the repository afresh
    store = feature_store(FeastLocation(REPO, tmp_path / "feast", **online))
    apply_repo(store, REPO)
    return store


def test_order_features_count_the_right_windows(spark) -> None:
    orders = spark.createDataFrame(
        [("C1", date(2026, 3, 1), 10.0, False, False), ("C1", date(2026, 2, 20), 20.0, True, False),
         ("C1", date(2025, 12, 20), 30.0, False, True), ("C1", date(2025, 11, 1), 99.0, False, False),
         ("C1", date(2026, 3, 4), 50.0, False, False)],
        "customer_id string, order_date date, amount_eur double, is_refunded boolean, is_cancelled boolean")
    row = tables.customer_order_features(orders, tables.first_order_dates(orders), DateRange.of(date(2026, 3, 2))).collect()
    assert len(row) == 1
    r = row[0]
    # 2026-03-04 is after the as-of day; 2025-11-01 is more than 90 days before it.
    assert (r.orders_7d, r.orders_30d, r.orders_90d) == (1, 2, 3)
    assert r.amount_eur_sum_90d == 60.0 and r.amount_eur_sum_30d == 30.0
    assert r.refund_rate_90d == 0.3333 and r.cancel_rate_90d == 0.3333  # rates are rounded to 4 places
    assert r.days_since_last_order == 1 and r.tenure_days == (date(2026, 3, 2) - date(2025, 11, 1)).days
    assert r.event_timestamp == datetime(2026, 3, 3)  # the end of the as-of day


def half_boundary_features(spark) -> tuple:
    """Means and rates exactly on a rounding boundary, where a double average tips either way."""
    day = date(2026, 3, 1)
    rows = [("A", day, 0.01, False, False), ("A", day, 0.02, False, False),
            ("B", day, 10.00, False, False), ("B", day, 10.01, False, False)]
    rows += [("C", day, 1.0, i < 3, False) for i in range(160)]  # 3/160 = 0.01875 refunded
    orders = spark.createDataFrame(rows, "customer_id string, order_date date, amount_eur double, "
                                         "is_refunded boolean, is_cancelled boolean")
    out = tables.customer_order_features(orders, tables.first_order_dates(orders), DateRange.of(day)).collect()
    by = {r.customer_id: r for r in out}
    return by["A"].amount_eur_mean_90d, by["B"].amount_eur_mean_90d, by["C"].refund_rate_90d


def test_means_and_rates_round_half_up_exactly(spark) -> None:
    assert half_boundary_features(spark) == (0.02, 10.01, 0.0188)


# Apache Spark rounds them the same: tests/test_transforms.py, where the session's one Apache Spark server runs.


def test_escalation_counts_only_outcomes_known_by_the_as_of_day(spark) -> None:
    tickets = spark.createDataFrame([("T1", "C1", date(2026, 3, 1), "chat"), ("T2", "C1", date(2026, 3, 1), "phone")],
                                    "ticket_id string, customer_id string, created_date date, channel string")
    outcomes = spark.createDataFrame([("T1", True, date(2026, 3, 2)), ("T2", True, date(2026, 3, 3))],
                                     "ticket_id string, escalated boolean, resolved_date date")
    rows = {r.partition_date: r for r in tables.customer_support_features(
        tickets, outcomes, DateRange(date(2026, 3, 1), date(2026, 3, 3))).collect()}
    assert rows[date(2026, 3, 1)].resolved_tickets_90d == 0 and rows[date(2026, 3, 1)].escalation_rate_90d is None
    assert rows[date(2026, 3, 2)].escalations_90d == 1
    assert rows[date(2026, 3, 3)].escalations_90d == 2 and rows[date(2026, 3, 3)].share_chat_30d == 0.5


def test_a_feature_written_after_a_ticket_is_never_joined_to_it(tmp_path: Path, monkeypatch, spark) -> None:
    lake = Lake(str(tmp_path / "lake"))
    rows = pa.Table.from_pylist([
        {"customer_id": "C1", "orders_7d": 1, "event_timestamp": datetime(2026, 3, 3, tzinfo=UTC), "partition_date": date(2026, 3, 2)},
        {"customer_id": "C1", "orders_7d": 5, "event_timestamp": datetime(2026, 3, 4, tzinfo=UTC), "partition_date": date(2026, 3, 3)},
    ])
    overwrite_partitions_arrow(rows, lake.table(ORDER_FEATURES), DateRange(date(2026, 3, 2), date(2026, 3, 3)))
    store = store_for(tmp_path, lake, monkeypatch)
    entity = pd.DataFrame({"customer_id": ["C1", "C1", "C1", "C1", "C2"], "event_timestamp": pd.to_datetime(
        ["2026-03-03 12:00", "2026-03-02 23:00", "2026-03-04 00:00", "2026-03-07 00:00", "2026-03-03 12:00"], utc=True)})
    got = store.get_historical_features(entity_df=entity, features=["customer_orders:orders_7d"]).to_df()
    assert got["orders_7d"].tolist()[0] == 1  # not the value written at 03-04, after this ticket
    assert pd.isna(got["orders_7d"].tolist()[1])  # nothing known yet
    assert got["orders_7d"].tolist()[2] == 5  # written exactly then: known
    assert pd.isna(got["orders_7d"].tolist()[3])  # older than the view's TTL (2 days)
    assert pd.isna(got["orders_7d"].tolist()[4])  # an unknown customer: nulls, no crash
    assert got["customer_id"].tolist() == entity["customer_id"].tolist()  # rows keep their order


def test_a_rewritten_partition_is_read_through_the_delta_log(tmp_path: Path, monkeypatch, spark) -> None:
    """Files a re-run removed from the table are not live rows (Feast's Dask store would read them)."""
    lake = Lake(str(tmp_path / "lake"))
    table = lake.table(ORDER_FEATURES)
    for value in (1, 7):
        rows = pa.Table.from_pylist([{"customer_id": "C1", "orders_7d": value, "partition_date": date(2026, 3, 2),
                                      "event_timestamp": datetime(2026, 3, 3, tzinfo=UTC)}])
        overwrite_partitions_arrow(rows, table, DateRange.of(date(2026, 3, 2)))
    assert len(list(Path(table.uri).rglob("*.parquet"))) == 2  # the old file is still on disk
    store = store_for(tmp_path, lake, monkeypatch)
    entity = pd.DataFrame({"customer_id": ["C1"], "event_timestamp": pd.to_datetime(["2026-03-03 10:00"], utc=True)})
    assert store.get_historical_features(entity_df=entity, features=["customer_orders:orders_7d"]).to_df()["orders_7d"].tolist() == [7]


def test_training_set_joins_labels_with_features_as_of_creation(tmp_path, monkeypatch, spark, lake_with_features) -> None:
    store = store_for(tmp_path, lake_with_features, monkeypatch)
    result = features.build_training_set(spark, lake_with_features, store, TICKET_ESCALATION, USE_CASE.feature_tables)
    assert TICKET_ESCALATION.training_table == "training_set_ticket_escalation" and TICKET_ESCALATION.label == "escalated"
    data = lake_with_features.table(TICKET_ESCALATION.training_table).read().to_pandas()
    assert result.write.rows == len(data) > 50 and result.service == "escalation_v1"
    assert set(data[TICKET_ESCALATION.label].unique()) <= {True, False} and 0 < result.positives < len(data)
    assert {"text", "channel", "orders_90d", "tickets_30d", "escalation_rate_90d"} <= set(data.columns)
    assert result.input_versions["features_customer_orders"] is not None
    # Exactly what it was built from: the silver tables its rows read and the service's feature tables.
    read = ("silver_tickets", "silver_ticket_outcomes", ORDER_FEATURES, SUPPORT_FEATURES)
    assert result.input_versions == {name: lake_with_features.table(name).current_version() for name in read}
    # Every feature value came from a row stamped at or before the ticket's creation.
    offline = lake_with_features.table(ORDER_FEATURES).read().to_pandas()
    first_ts = offline.groupby("customer_id")["event_timestamp"].min()
    known = data[data["orders_90d"].notna()]
    assert (known["event_timestamp"].values >= known["customer_id"].map(first_ts).values).all()


def _online_rows(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    rows = []
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        rows += conn.execute(f'SELECT "{table}", entity_key, feature_name, value, value_text, event_ts FROM "{table}" '
                             "ORDER BY 2, 3").fetchall()
    return rows


def test_fast_push_writes_exactly_what_feast_materialize_writes(tmp_path, monkeypatch, lake_with_features) -> None:
    ours = store_for(tmp_path / "ours", lake_with_features, monkeypatch)
    theirs = store_for(tmp_path / "feast", lake_with_features, monkeypatch)
    assert (ORDERS_TABLE.view, SUPPORT_TABLE.view) == ("customer_orders", "customer_support")
    for table in (ORDERS_TABLE, SUPPORT_TABLE):
        features.push_online(ours, lake_with_features, table, BOTH)
    theirs.materialize(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 5, tzinfo=UTC))
    mine = _online_rows(tmp_path / "ours" / "feast" / "online.db")
    feasts = _online_rows(tmp_path / "feast" / "feast" / "online.db")
    assert len(mine) > 1000 and mine == feasts


def test_online_equals_offline_for_each_entitys_latest_row(tmp_path, monkeypatch, lake_with_features) -> None:
    store = store_for(tmp_path, lake_with_features, monkeypatch)
    features.push_online(store, lake_with_features, ORDERS_TABLE, BOTH)
    features.push_online(store, lake_with_features, SUPPORT_TABLE, BOTH)
    offline = lake_with_features.table(ORDER_FEATURES).read().to_pandas()
    latest = offline.sort_values("event_timestamp").drop_duplicates("customer_id", keep="last").set_index("customer_id")
    ids = latest.index[:40].tolist()
    served = online_features(store, SERVICE, customers(*ids), stale_after=timedelta(days=36500))
    assert [row.key for row in served] == customers(*ids)
    for row in served:
        customer = row.key["customer_id"]
        for name in ("orders_7d", "orders_90d", "amount_eur_sum_90d", "refund_rate_90d", "tenure_days"):
            assert row.values[name].value == pytest.approx(latest.loc[customer, name]), (customer, name)


def test_a_missing_customer_gets_nulls_with_status_and_old_values_are_stale(tmp_path, monkeypatch, lake_with_features) -> None:
    store = store_for(tmp_path, lake_with_features, monkeypatch)
    features.push_online(store, lake_with_features, ORDERS_TABLE, BOTH)
    known = lake_with_features.table(ORDER_FEATURES).read().column("customer_id")[0].as_py()
    rows = online_features(store, SERVICE, customers(known, "C999999"), STALE_AFTER, now=datetime(2026, 3, 4, 12, tzinfo=UTC))
    assert rows[0].values["orders_90d"].status == Status.PRESENT and rows[0].values["orders_90d"].value >= 1
    assert rows[1].key == {"customer_id": "C999999"} and rows[1].values
    assert all(v.value is None and v.status == Status.MISSING for v in rows[1].values.values())
    later = online_features(store, SERVICE, customers(known), STALE_AFTER, now=datetime(2026, 3, 20, tzinfo=UTC))
    assert later[0].values["orders_90d"].status == Status.STALE


def test_pushing_a_partition_twice_leaves_the_online_store_unchanged(tmp_path, monkeypatch, lake_with_features) -> None:
    store = store_for(tmp_path, lake_with_features, monkeypatch)
    features.push_online(store, lake_with_features, ORDERS_TABLE, DateRange.of(DAY2))
    first = _online_rows(tmp_path / "feast" / "online.db")
    features.push_online(store, lake_with_features, ORDERS_TABLE, DateRange.of(DAY2))
    assert _online_rows(tmp_path / "feast" / "online.db") == first and first


def _redis_dump(url: str) -> dict:
    import redis

    host, port = url.split(":")
    client = redis.Redis(host=host, port=int(port))
    return {k: client.hgetall(k) for k in sorted(client.keys("*"))}


def test_redis_push_matches_feast_and_is_idempotent(tmp_path, monkeypatch, lake_with_features, redis_url) -> None:
    import redis

    host, port = redis_url.split(":")
    client = redis.Redis(host=host, port=int(port))
    theirs = store_for(tmp_path / "feast", lake_with_features, monkeypatch, online_store="redis", redis_url=redis_url)
    client.flushall()
    theirs.materialize(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 5, tzinfo=UTC))
    by_feast = _redis_dump(redis_url)
    client.flushall()
    ours = store_for(tmp_path / "ours", lake_with_features, monkeypatch, online_store="redis", redis_url=redis_url)
    for table in (ORDERS_TABLE, SUPPORT_TABLE):
        features.push_online(ours, lake_with_features, table, BOTH)
    by_us = _redis_dump(redis_url)
    assert len(by_us) > 100 and by_us == by_feast
    again = features.push_online(ours, lake_with_features, ORDERS_TABLE, BOTH)
    assert again.skipped_older == again.entities and _redis_dump(redis_url) == by_us
    some = lake_with_features.table(ORDER_FEATURES).read().column("customer_id")[0].as_py()
    served = online_features(ours, SERVICE, customers(some), stale_after=timedelta(days=36500))
    assert served[0].values["orders_90d"].value >= 1


def test_apply_reports_an_added_and_a_removed_feature(tmp_path, monkeypatch, lake_with_features) -> None:
    store = store_for(tmp_path, lake_with_features, monkeypatch)
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo)
    views = repo / "feature_views.py"
    text = views.read_text().replace('        _f("cancel_rate_90d", Float64, "share of orders cancelled, 90 days"),\n', "")
    added = '        _f("max_amount_eur_90d", Float64, "largest order in EUR, 90 days"),\n'
    text = text.replace('        _f("tenure_days",', added + '        _f("tenure_days",')
    views.write_text(text)
    diff = apply_repo(store, repo)
    assert diff.added_features == ["customer_orders.max_amount_eur_90d"]
    assert diff.removed_features == ["customer_orders.cancel_rate_90d"]
    assert "feature_view:customer_orders" in diff.changed and not diff.removed
