"""Dagster's asset events reach the audit trail once each, with their evidence."""

import dagster as dg
from loopwise.events import open_store
from supportdesk import USE_CASE

from resources import EventStoreResource
from sensors import audit_trail_sensor
from tests.conftest import Built


def test_materializations_and_checks_are_copied_once(built: Built) -> None:
    # The main job synced the trail after its runs (sensors.audit.sync_once); the daemon's ticks add nothing twice.
    store = open_store(built.settings.events_url)
    materialized = store.read(kind="asset.materialized")
    checks = store.read(kind="asset.check_evaluated")
    data_layer = {f"asset:{stage}_{s.name}" for stage in ("raw", "bronze", "silver") for s in USE_CASE.sources}
    assert data_layer <= {r.subject for r in materialized}
    # Every run's events, the last run's too: a SQLite instance numbers each run's events from 1.
    endpoints = {f"asset:{spec.slug}/deployed_endpoint" for spec in USE_CASE.models}
    assert endpoints <= {r.subject for r in materialized}, sorted({r.subject for r in materialized})
    for r in (r for r in materialized if r.subject in data_layer):
        assert r.payload["partition"] in ("2026-03-02", "2026-03-03") and "delta_version" in r.payload["metadata"]
        assert r.payload["metadata"]["delta_table"] == r.subject.removeprefix("asset:")
    bronze_orders = next(r for r in checks if r.subject == "asset:bronze_orders")
    assert bronze_orders.payload["check"] == "bad_rows_below_threshold" and bronze_orders.payload["passed"]
    assert bronze_orders.payload["metadata"]["rows_quarantined"] > 0
    gates = [r for r in checks if r.payload["check"] == "passes_gate"]
    assert len(gates) >= len(USE_CASE.models)
    events = EventStoreResource(url=built.settings.events_url)
    context = dg.build_sensor_context(instance=built.instance, resources={"events": events})
    audit_trail_sensor(context)  # a daemon tick after the sync: catches up on any run since
    total = store.last_seq()
    audit_trail_sensor(dg.build_sensor_context(instance=built.instance, resources={"events": events}))  # cursor lost
    audit_trail_sensor(dg.build_sensor_context(instance=built.instance, resources={"events": events},
                                               cursor=context.cursor))  # a later tick
    assert store.last_seq() == total
    assert store.verify().ok
