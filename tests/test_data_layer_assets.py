"""The data-layer assets materialized in a temporary Dagster instance on the embedded engine."""

from datetime import date, timedelta

import dagster as dg
import pytest
from loopwise.config import Settings
from loopwise.contracts import Column, SourceContract
from loopwise.lake.tables import DateRange, Lake
from loopwise.landing import zone
from loopwise.pipelines import stages
from loopwise.usecase import Source
from supportdesk import USE_CASE

from assets import DATA_LAYER_ASSETS
from resources import LakeResource, SparkResource
from tests.conftest import DAY1, DAY2, Built

SOURCES = [s.name for s in USE_CASE.sources]


def resources(settings: Settings, threshold: float | None = None) -> dict[str, object]:
    return {
        "spark": SparkResource(remote=None),
        "lake": LakeResource(uri=settings.lake_uri, landing_dir=str(settings.paths.landing),
                             max_bad_row_fraction=threshold if threshold is not None
                             else settings.validation.max_bad_row_fraction),
    }


def materialize(settings: Settings, instance: dg.DagsterInstance, start: date, end: date | None = None,
                threshold: float | None = None) -> dg.ExecuteInProcessResult:
    tags = {} if end is None else {"dagster/asset_partition_range_start": start.isoformat(),
                                   "dagster/asset_partition_range_end": end.isoformat()}
    return dg.materialize(DATA_LAYER_ASSETS, instance=instance, resources=resources(settings, threshold),
                          partition_key=None if end else start.isoformat(), tags=tags, raise_on_error=False)


def counts(lake: Lake, window: DateRange) -> dict[str, int]:
    return {t.name: t.count(window) for s in SOURCES for t in
            (stages.raw_table(lake, s), stages.bronze_table(lake, s), stages.silver_table(lake, s))}


def test_two_partitions_then_one_again_is_idempotent(settings: Settings, lake: Lake) -> None:
    for day in (DAY1, DAY2):
        zone.land_day(USE_CASE, settings.paths.landing, day, 150, seed=3)
    with dg.instance_for_test() as instance:
        assert materialize(settings, instance, DAY1).success
        assert materialize(settings, instance, DAY2).success
        both = DateRange(DAY1, DAY2)
        before = counts(lake, both)
        versions = {s: stages.silver_table(lake, s).current_version() for s in SOURCES}
        assert materialize(settings, instance, DAY1).success
        assert counts(lake, both) == before
        assert all(before[f"silver_{s}"] > 0 for s in SOURCES)
        # The re-run committed a new version that replaced exactly that partition.
        assert all(stages.silver_table(lake, s).current_version() == versions[s] + 1 for s in SOURCES)
        day2_only = counts(lake, DateRange.of(DAY2))
        assert all(v > 0 for v in day2_only.values())


def test_a_backfill_range_runs_as_one_run(built: Built) -> None:
    # The main job's data-layer step is a single-run backfill of both days.
    runs = [r for r in built.instance.get_runs() if r.tags.get("loopwise/step", "").startswith("landing files")]  # type: ignore[attr-defined]
    assert len(runs) == 1 and runs[0].tags["dagster/asset_partition_range_end"] == DAY2.isoformat()
    silver = stages.silver_table(built.lake, "orders")
    assert silver.current_version() == 0  # one commit for both days
    assert silver.count(DateRange.of(DAY1)) > 0 and silver.count(DateRange.of(DAY2)) > 0


def test_the_landing_sensor_starts_one_run_per_stretch_of_consecutive_days(settings: Settings, lake: Lake) -> None:
    from assets import ALL_ASSETS
    from resources import build_resources
    from sensors.landing import landing_sensor
    from sensors.monitoring import ready_for_first_training

    later = DAY2 + timedelta(days=2)
    for day in (DAY1, DAY2, later):
        zone.land_day(USE_CASE, settings.paths.landing, day, 40, seed=4)
    (settings.paths.landing / "orders" / f"{DAY2 + timedelta(days=1)}.csv").write_text("")  # one source only: incomplete
    sensor_resources = {"lake": resources(settings)["lake"]}
    with dg.instance_for_test() as instance:
        first = landing_sensor(dg.build_sensor_context(instance=instance, resources=sensor_resources))
        assert isinstance(first, dg.SensorResult)
        requests = first.run_requests or []
        assert [(r.partition_key, r.partition_key_range) for r in requests] == [
            (None, dg.PartitionKeyRange(DAY1.isoformat(), DAY2.isoformat())), (later.isoformat(), None)]
        # The range request is one run that carries both days from raw to the online store, as the daemon runs it.
        result = dg.materialize(ALL_ASSETS, selection=landing_sensor.job.selection, instance=instance,
                                resources=build_resources(settings, USE_CASE), tags=requests[0].tags)
        assert result.success and len(instance.get_runs()) == 1
        for key in ("raw_orders", "silver_tickets", "online_features"):
            assert instance.get_materialized_partitions(dg.AssetKey(key)) == {DAY1.isoformat(), DAY2.isoformat()}, key
        # A never-trained model trains once both days are in Delta and in Dagster's record, not on the Delta alone.
        assert ready_for_first_training(instance, sensor_resources["lake"], "order-refund-risk")
        with dg.instance_for_test() as unrecorded:
            assert ready_for_first_training(unrecorded, sensor_resources["lake"], "order-refund-risk") is None
        again = landing_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=sensor_resources))
        assert isinstance(again, dg.SkipReason)
        zone.land_day(USE_CASE, settings.paths.landing, DAY2, 40, seed=5)  # landed anew: that day alone again
        relanded = landing_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=sensor_resources))
        assert isinstance(relanded, dg.SensorResult)
        assert [r.partition_key for r in relanded.run_requests or []] == [DAY2.isoformat()]


def test_quarantine_holds_exactly_the_bad_rows_and_silver_none(settings: Settings, lake: Lake) -> None:
    landed = zone.land_day(USE_CASE, settings.paths.landing, DAY1, 200, seed=5, bad_row_fraction=0.03)
    with dg.instance_for_test() as instance:
        result = materialize(settings, instance, DAY1)
        assert result.success
        quarantine = stages.quarantine_table(lake).read().to_pylist()
        for f in landed:
            held = {r["line"] for r in quarantine if r["source"] == f.source}
            assert held == set(f.bad_lines), f.source
            silver_lines = stages.bronze_table(lake, f.source).read().column("_line").to_pylist()
            assert not set(silver_lines) & set(f.bad_lines)
            assert stages.silver_table(lake, f.source).count() == f.rows - len(f.bad_lines)
        checks = {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}
        evaluation = checks["bronze_orders"]
        assert evaluation.passed
        assert evaluation.metadata["rows_quarantined"].value == len(next(f for f in landed if f.source == "orders").bad_lines)
        # A clean re-landing of the day clears its quarantine: the partition is replaced, not appended.
        zone.land_day(USE_CASE, settings.paths.landing, DAY1, 200, seed=5, bad_row_fraction=0.0)
        assert materialize(settings, instance, DAY1).success
        assert stages.quarantine_counts(lake) == {}


def test_above_the_threshold_the_blocking_check_stops_downstream(settings: Settings, lake: Lake) -> None:
    zone.land_day(USE_CASE, settings.paths.landing, DAY1, 150, seed=6, bad_row_fraction=0.2)
    with dg.instance_for_test() as instance:
        result = materialize(settings, instance, DAY1, threshold=0.05)
        assert not result.success
        evaluation = next(e for e in result.get_asset_check_evaluations() if e.asset_key == dg.AssetKey("bronze_orders"))
        assert not evaluation.passed
        assert evaluation.metadata["bad_row_fraction"].value > 0.05
        assert "failed_expectations" in evaluation.metadata
        materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert {"bronze_orders", "bronze_tickets"} <= materialized
        assert not {a for a in materialized if a.startswith("silver_")}
        assert not stages.silver_table(lake, "orders").exists()


def test_a_missing_landing_file_fails_with_the_path_and_the_command(settings: Settings) -> None:
    with dg.instance_for_test() as instance:
        result = materialize(settings, instance, DAY1)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        message = str(failure.event_specific_data.error)
        assert "landing file missing" in message and "loopwise land --date 2026-03-02" in message


def test_a_landed_schema_change_is_reported_and_nothing_dropped(settings: Settings, lake: Lake) -> None:
    zone.land_day(USE_CASE, settings.paths.landing, DAY1, 80, seed=7)
    path = settings.paths.landing / "orders" / "2026-03-02.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0] + ",coupon"] + [line + ",SPRING26" for line in lines[1:]]) + "\n")
    with dg.instance_for_test() as instance:
        result = materialize(settings, instance, DAY1)
        assert result.success  # extra columns warn; missing ones would block
        evaluation = next(e for e in result.get_asset_check_evaluations() if e.asset_key == dg.AssetKey("raw_orders"))
        assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
        assert "coupon" in evaluation.metadata["extra_columns (kept in _extra_columns)"].value
        raw = stages.raw_table(lake, "orders").read().to_pylist()
        assert all(r["_extra_columns"] == '{"coupon": "SPRING26"}' for r in raw)


@pytest.mark.parametrize("missing", ["currency"])
def test_a_missing_column_blocks_downstream(settings: Settings, lake: Lake, missing: str) -> None:
    zone.land_day(USE_CASE, settings.paths.landing, DAY1, 80, seed=7)
    path = settings.paths.landing / "orders" / "2026-03-02.csv"
    header, *rows = path.read_text().splitlines()
    drop = header.split(",").index(missing)
    path.write_text("\n".join(",".join(c for i, c in enumerate(r.split(",")) if i != drop) for r in [header, *rows]) + "\n")
    with dg.instance_for_test() as instance:
        result = materialize(settings, instance, DAY1)
        assert not result.success
        evaluation = next(e for e in result.get_asset_check_evaluations() if e.asset_key == dg.AssetKey("raw_orders"))
        assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
        assert not stages.bronze_table(lake, "orders").exists()


RETURNS = Source(
    SourceContract("returns", key="return_id", event_time="returned_at", columns=(
        Column("return_id", "id"), Column("order_id", "id"), Column("returned_at", "timestamp"),
        Column("reason", "enum", allowed=("damaged", "late", "changed_mind")))),
    silver=lambda bronze: bronze.select("return_id", "order_id", "returned_at", "reason",
                                        (bronze["reason"] == "damaged").alias("is_damaged"), "partition_date"),
    silver_description="Returns with a damage flag.",
)


def test_a_new_source_needs_its_contract_and_silver_transform_only(settings: Settings, lake: Lake) -> None:
    """A source declared here (nothing else written) gets raw, bronze (with validation) and silver assets."""
    from assets.bronze import bronze_asset
    from assets.raw import raw_asset
    from assets.silver import silver_asset

    path = settings.paths.landing / "returns" / f"{DAY1}.csv"
    path.parent.mkdir(parents=True)
    path.write_text("return_id,order_id,returned_at,reason\n"
                    "R1,O1,2026-03-02 10:00:00,damaged\nR2,O2,2026-03-02 11:00:00,late\n"
                    "R3,O3,yesterday,late\nR4,O4,2026-03-02 12:00:00,lost\n")
    assets = [raw_asset(RETURNS.contract), bronze_asset(RETURNS.contract), silver_asset(RETURNS)]
    with dg.instance_for_test() as instance:
        result = dg.materialize(assets, instance=instance, resources=resources(settings, threshold=0.5),
                                partition_key=DAY1.isoformat())
    assert result.success
    silver = stages.silver_table(lake, "returns").read().to_pylist()
    assert [(r["return_id"], r["is_damaged"]) for r in silver] == [("R1", True), ("R2", False)]
    quarantined = {r["line"]: r["failed_expectations"] for r in stages.quarantine_table(lake).read().to_pylist()}
    assert set(quarantined) == {3, 4} and "returned_at" in quarantined[3] and "reason" in quarantined[4]
