"""Dagster's asset events reach the audit trail once each, with their evidence."""

import dagster as dg
from loopwise.config import Settings
from loopwise.events import open_store
from loopwise.landing import zone

from resources import EventStoreResource
from sensors import audit_trail_sensor
from tests.conftest import DAY1
from tests.test_data_layer_assets import materialize


def test_materializations_and_checks_are_copied_once(settings: Settings) -> None:
    zone.land_day(settings.paths.landing, DAY1, 80, seed=8, bad_row_fraction=0.02)
    events = EventStoreResource(url=settings.events_url)
    with dg.instance_for_test() as instance:
        assert materialize(settings, instance, DAY1).success
        context = dg.build_sensor_context(instance=instance, resources={"events": events})
        audit_trail_sensor(context)
        store = open_store(settings.events_url)
        materialized = store.read(kind="asset.materialized")
        checks = store.read(kind="asset.check_evaluated")
        assert {r.subject for r in materialized} == {f"asset:{stage}_{s}" for stage in ("raw", "bronze", "silver")
                                                     for s in ("orders", "tickets", "ticket_outcomes")}
        assert all(r.payload["partition"] == "2026-03-02" and "delta_version" in r.payload["metadata"] for r in materialized)
        bronze_orders = next(r for r in checks if r.subject == "asset:bronze_orders")
        assert bronze_orders.payload["check"] == "bad_rows_below_threshold" and bronze_orders.payload["passed"]
        assert bronze_orders.payload["metadata"]["rows_quarantined"] > 0
        total = store.last_seq()
        # A retried tick (cursor lost) and a later tick add nothing twice.
        audit_trail_sensor(dg.build_sensor_context(instance=instance, resources={"events": events}))
        audit_trail_sensor(dg.build_sensor_context(instance=instance, resources={"events": events}, cursor=context.cursor))
        assert store.last_seq() == total
        assert store.verify().ok
