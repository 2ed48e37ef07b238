"""Mirror Dagster's asset events (materializations, check results) into the audit trail."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import dagster as dg
from loopwise.events import Event

from resources import EventStoreResource

EVENT_TYPES = {
    dg.DagsterEventType.ASSET_MATERIALIZATION: "asset.materialized",
    dg.DagsterEventType.ASSET_CHECK_EVALUATION: "asset.check_evaluated",
}
# What lineage and the audit need: the table, its version and what the write read (`loopwise lineage`
# walks these), partitions, landing files, quality figures.
_KEPT_METADATA = ("delta_table", "delta_version", "input_versions", "landing_files", "dagster/row_count", "partitions",
                  "quarantined_rows", "rows_quarantined", "bad_row_fraction", "threshold", "missing_columns")


def _value(entry: Any) -> Any:
    value = getattr(entry, "value", entry)
    return value if isinstance(value, (int, float, str, bool, type(None), dict, list)) else str(value)


def to_event(record: dg.EventLogRecord) -> Event:
    """The audit event for one Dagster event record; its storage id makes appending idempotent."""
    dagster_event = record.event_log_entry.dagster_event
    assert dagster_event is not None
    kind = EVENT_TYPES[dagster_event.event_type]
    data = dagster_event.event_specific_data
    if kind == "asset.materialized":
        materialization = data.materialization  # type: ignore[union-attr]
        asset = materialization.asset_key.to_user_string()
        payload = {"partition": materialization.partition,
                   "metadata": {k: _value(v) for k, v in materialization.metadata.items() if k in _KEPT_METADATA}}
    else:
        evaluation = data  # AssetCheckEvaluation
        asset = evaluation.asset_key.to_user_string()  # type: ignore[union-attr]
        payload = {"check": evaluation.check_name, "passed": evaluation.passed,  # type: ignore[union-attr]
                   "severity": evaluation.severity.value,  # type: ignore[union-attr]
                   "metadata": {k: _value(v) for k, v in evaluation.metadata.items() if k in _KEPT_METADATA}}  # type: ignore[union-attr]
    payload["run_id"] = record.run_id
    # When it happened in Dagster: the trail records it a sensor tick later, after events written at the time.
    payload["at"] = datetime.fromtimestamp(record.timestamp, UTC).isoformat()
    # Storage ids are per run on a SQLite instance (its event log is sharded by run): the run id makes keys unique.
    return Event(kind, f"asset:{asset}", payload, actor="dagster", key=f"dagster:{record.run_id}:{record.storage_id}")


FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
RUNS_PER_TICK = 50


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Copies asset materializations and check results of finished runs into the audit trail.")
def audit_trail_sensor(context: dg.SensorEvaluationContext, events: EventStoreResource) -> dg.SkipReason:
    # Walks finished runs rather than a global event cursor: that works on every instance
    # storage, including the default SQLite one, which shards its event log per run.
    after = datetime.fromtimestamp(float(context.cursor), tz=UTC) if context.cursor else None
    runs = context.instance.get_run_records(
        filters=dg.RunsFilter(statuses=FINISHED, updated_after=after),
        order_by="update_timestamp", ascending=True, limit=RUNS_PER_TICK)
    store = events.store()
    copied = 0
    for run in runs:
        connection = context.instance.get_records_for_run(run.dagster_run.run_id, of_type=set(EVENT_TYPES))
        for record in connection.records:
            store.append(to_event(record))  # idempotent by storage id: a retried tick adds nothing twice
            copied += 1
        # Runs updated in the same instant as the cursor are read again next tick; keys dedupe them.
        context.update_cursor(str(run.update_timestamp.timestamp() - 1e-3))
    return dg.SkipReason(f"copied {copied} asset events of {len(runs)} finished runs into the audit trail")


def sync_once(instance: dg.DagsterInstance, events: EventStoreResource) -> str:
    """One tick against an instance, for runs made without the daemon (e.g. `loopwise demo`)."""
    context = dg.build_sensor_context(instance=instance, resources={"events": events})
    return str(audit_trail_sensor(context).skip_message)
