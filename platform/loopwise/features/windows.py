"""Building blocks for daily feature tables: events as of each day of a window, exact ratios.

A row for day D describes an entity with everything known by the end of D: its `event_timestamp`
is D+1 00:00 UTC, so a point-in-time join never hands an entity row a value computed from events
after its own time. Each event is exploded only into the days of the window it counts for (at
most `lookback_days`), so a one-day run touches each event once.
"""

from __future__ import annotations

from datetime import timedelta

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from loopwise.lake.tables import DateRange


def history(window: DateRange, lookback_days: int) -> DateRange:
    """The days of events a window's features need: `lookback_days` before its start through its end."""
    return DateRange(window.start - timedelta(days=lookback_days - 1), window.end)


def as_of_days(events: DataFrame, event_date: str, window: DateRange, lookback_days: int) -> DataFrame:
    """Each event repeated as `as_of` for every day of `window` within `lookback_days` after it, with `age_days`."""
    start, end = F.lit(window.start).cast("date"), F.lit(window.end).cast("date")
    first = F.greatest(F.col(event_date), start)
    last = F.least(F.date_add(F.col(event_date), lookback_days - 1), end)
    return (
        events.where((F.col(event_date) <= end) & (F.date_add(F.col(event_date), lookback_days - 1) >= start))
        .withColumn("as_of", F.explode(F.sequence(first, last)))
        .withColumn("age_days", F.datediff(F.col("as_of"), F.col(event_date)))
    )


def within(days: int) -> Column:
    """True for exploded events at most `days - 1` days before their as-of day."""
    return F.col("age_days") < days


def rounded_ratio(numerator: Column, denominator: Column, places: int) -> Column:
    """numerator / denominator (whole, non-negative) rounded half up to `places` decimals, exactly.

    `round(avg(x), n)` over doubles lands on either side of a .5 boundary depending on the engine
    and the summation order; this integer form gives the same value on every engine and run.
    Null when the denominator is 0.
    """
    scale = 10**places
    quotient = F.floor((numerator * (2 * scale) + denominator) / (denominator * 2))
    return F.when(denominator > 0, quotient / F.lit(float(scale)))


def cents(amount: Column) -> Column:
    """A two-decimal amount as whole cents."""
    return F.round(amount * 100).cast("long")


def stamp(df: DataFrame) -> DataFrame:
    """Turn `as_of` into the feature row's `partition_date` and `event_timestamp` (the next midnight)."""
    return (df.withColumn("event_timestamp", F.to_timestamp(F.date_add(F.col("as_of"), 1)))
              .withColumnRenamed("as_of", "partition_date"))
