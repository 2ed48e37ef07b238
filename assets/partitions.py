"""Daily partitions shared by every date-partitioned asset, and the window a run covers."""

from __future__ import annotations

import warnings
from datetime import timedelta

import dagster as dg
from loopwise.config import load_settings
from loopwise.lake.tables import DateRange

DAILY = dg.DailyPartitionsDefinition(start_date=load_settings().partitions.start_date.isoformat(), end_offset=1)
# A backfill of many days runs as one run; each asset processes its whole window in one Spark job.
SINGLE_RUN = dg.BackfillPolicy.single_run()
# backfill_policy is marked beta in Dagster 1.13; it is the documented way to get single-run backfills.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)


def window_of(context: dg.AssetExecutionContext) -> DateRange:
    """The inclusive range of days this run materializes (one day, or a backfill's range)."""
    window = context.partition_time_window
    return DateRange(window.start.date(), (window.end - timedelta(days=1)).date())
