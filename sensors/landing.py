"""The landing sensor: a day whose files are complete starts its data path, raw to the online store.

A sensor, not an automation condition, because the trigger lives outside Dagster (files in the
landing zone) and needs a look at them: a day counts once every source's file is there, and again
when any file is landed anew. Consecutive days seen at one tick start one run over their range (the
data path's single-run backfill policy), so a week landed at once is one run, not seven racing each
other. The run carries the days through raw, bronze, silver and the feature tables to the online store
(`assets.DATA_PATH`). Measured in `loopwise loop`: its three normal days reached the online store at
~79 s with a raw run and then automation's run for the rest (each waits for a tick and starts its own
process and engine session), at ~46 s in one run. `assets.automation.CARRY_DAY` still
carries a day whose parents change any other way (raw re-materialized from the UI, a partial backfill).
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, timedelta

import dagster as dg
from loopwise.config import load_settings
from loopwise.landing.zone import complete_days

from assets import DATA_PATH
from assets.partitions import DAILY
from assets.usecase import USE_CASE
from resources import LakeResource

_automation = load_settings().automation


@dg.sensor(name="landing_sensor", target=DATA_PATH, minimum_interval_seconds=_automation.landing_interval_seconds,
           default_status=dg.DefaultSensorStatus.RUNNING if _automation.on_by_default else dg.DefaultSensorStatus.STOPPED,
           description="Requests the data path (raw to the online store) of each day whose landing files are "
                       "complete (every source), again when a file is landed anew; consecutive days in one run.")
def landing_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult | dg.SkipReason:
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    days = complete_days(lake.landing_root(), [s.name for s in USE_CASE.sources])
    first, last = DAILY.start.date(), DAILY.get_last_partition_window().start.date()  # type: ignore[union-attr]
    new, outside = [], []
    for day, signature in days.items():
        if seen.get(day) == signature:
            continue
        if not first <= date.fromisoformat(day) <= last:
            outside.append(day)
            continue
        new.append(day)
        seen[day] = signature
    requests = [_ingest(days_run, days) for days_run in consecutive(new)]
    if not requests:
        note = f"; outside the partitions {first}..{last}: {', '.join(outside)}" if outside else ""
        return dg.SkipReason(f"no newly complete day in {lake.landing_root()}{note}")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(seen))


def consecutive(days: list[str]) -> list[list[str]]:
    """ISO days (sorted) grouped into runs of consecutive dates."""
    groups: list[list[str]] = []
    for day in days:
        if groups and date.fromisoformat(day) - date.fromisoformat(groups[-1][-1]) == timedelta(days=1):
            groups[-1].append(day)
        else:
            groups.append([day])
    return groups


def _ingest(days: list[str], signatures: dict[str, str]) -> dg.RunRequest:
    """One run over consecutive days; its key changes when any of their files is landed anew."""
    key = f"{days[0]}..{days[-1]}:" + hashlib.sha256("\n".join(signatures[d] for d in days).encode()).hexdigest()[:16]
    if len(days) == 1:
        return dg.RunRequest(run_key=key, partition_key=days[0])
    return dg.RunRequest(run_key=key, tags={"dagster/asset_partition_range_start": days[0],
                                            "dagster/asset_partition_range_end": days[-1]})


# Evaluates every asset's automation condition (Dagster's own machinery, run by the daemon).
data_path_automation = dg.AutomationConditionSensorDefinition(
    "data_path_automation", target=dg.AssetSelection.all(), minimum_interval_seconds=_automation.landing_interval_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING if _automation.on_by_default else dg.DefaultSensorStatus.STOPPED,
    description="Carries each landed day from raw to the online store, and applies feature_repo/ when it changes.")
