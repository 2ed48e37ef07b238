"""Customer feature tables, as of the end of each day, with PySpark windowed aggregations.

A row for day D describes a customer with everything known by the end of D: its
`event_timestamp` is D+1 00:00 UTC, so a point-in-time join never hands a ticket a value
computed from events after its creation. Each order or ticket is exploded only into the days of
the window it counts for (at most 90), so a one-day run touches each event once.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from loopwise.contracts import CHANNELS
from loopwise.lake.tables import DateRange

LOOKBACK_DAYS = 90


def _as_of_days(events: DataFrame, event_date: str, window: DateRange) -> DataFrame:
    """Each event repeated for every day of `window` within 90 days after it, with its age in days."""
    start, end = F.lit(window.start).cast("date"), F.lit(window.end).cast("date")
    first = F.greatest(F.col(event_date), start)
    last = F.least(F.date_add(F.col(event_date), LOOKBACK_DAYS - 1), end)
    return (
        events.where((F.col(event_date) <= end) & (F.date_add(F.col(event_date), LOOKBACK_DAYS - 1) >= start))
        .withColumn("as_of", F.explode(F.sequence(first, last)))
        .withColumn("age_days", F.datediff(F.col("as_of"), F.col(event_date)))
    )


def _within(days: int) -> Column:
    return F.col("age_days") < days


def _rounded_ratio(numerator: Column, denominator: Column, places: int) -> Column:
    """numerator / denominator (whole, non-negative) rounded half up to `places` decimals, exactly.

    `round(avg(x), n)` over doubles lands on either side of a .5 boundary depending on the engine
    and the summation order; this integer form gives the same value on every engine and run.
    Null when the denominator is 0.
    """
    scale = 10**places
    quotient = F.floor((numerator * (2 * scale) + denominator) / (denominator * 2))
    return F.when(denominator > 0, quotient / F.lit(float(scale)))


def _cents(amount: Column) -> Column:
    """A two-decimal amount as whole cents (silver amounts are rounded to cents)."""
    return F.round(amount * 100).cast("long")


def _stamp(df: DataFrame) -> DataFrame:
    return (df.withColumn("event_timestamp", F.to_timestamp(F.date_add(F.col("as_of"), 1)))
              .withColumnRenamed("as_of", "partition_date"))


def customer_order_features(orders: DataFrame, first_orders: DataFrame, window: DateRange) -> DataFrame:
    """Order behaviour per customer over 7/30/90 days, as of the end of each day in `window`.

    `orders`: silver orders from 90 days before the window through its end; `first_orders`:
    each customer's first order date ever (for tenure).
    """
    daily = _as_of_days(orders, "order_date", window)
    count = lambda days: F.sum(F.when(_within(days), 1).otherwise(0)).cast("long")
    cents = _cents(F.col("amount_eur"))
    n = F.count(F.lit(1))
    rate = lambda flag: _rounded_ratio(F.sum(F.col(flag).cast("long")), F.count(flag), 4)  # avg() semantics: nulls skipped
    features = daily.groupBy("customer_id", "as_of").agg(
        count(7).alias("orders_7d"),
        count(30).alias("orders_30d"),
        n.cast("long").alias("orders_90d"),
        (F.sum(F.when(_within(30), cents).otherwise(0)) / 100.0).alias("amount_eur_sum_30d"),
        (F.sum(cents) / 100.0).alias("amount_eur_sum_90d"),
        _rounded_ratio(F.sum(cents), n * 100, 2).alias("amount_eur_mean_90d"),
        rate("is_refunded").alias("refund_rate_90d"),
        rate("is_cancelled").alias("cancel_rate_90d"),
        F.min("age_days").cast("long").alias("days_since_last_order"),
    )
    tenure = F.datediff(F.col("as_of"), F.col("first_order_date")).cast("long")
    return _stamp(features.join(first_orders, "customer_id", "left").withColumn("tenure_days", tenure)
                  .drop("first_order_date"))


def first_order_dates(orders: DataFrame) -> DataFrame:
    return orders.groupBy("customer_id").agg(F.min("order_date").alias("first_order_date"))


def customer_support_features(tickets: DataFrame, outcomes: DataFrame, window: DateRange) -> DataFrame:
    """Support behaviour per customer, as of the end of each day in `window`.

    Escalation counts only outcomes resolved by the end of the as-of day: a label not yet
    known then is never a feature.
    """
    daily_tickets = _as_of_days(tickets, "created_date", window)
    count = lambda days: F.sum(F.when(_within(days), 1).otherwise(0))
    recent = F.count(F.when(_within(30), F.col("channel")))
    shares = [_rounded_ratio(F.sum(F.when(_within(30), (F.col("channel") == c).cast("long")).otherwise(0)), recent, 4)
              .alias(f"share_{c}_30d") for c in CHANNELS]
    ticket_features = daily_tickets.groupBy("customer_id", "as_of").agg(
        count(7).cast("long").alias("tickets_7d"), count(30).cast("long").alias("tickets_30d"),
        F.count(F.lit(1)).cast("long").alias("tickets_90d"), *shares)
    resolved = (outcomes.join(tickets.select("ticket_id", "customer_id"), "ticket_id")
                .select("customer_id", "escalated", F.col("resolved_date")))
    daily_outcomes = _as_of_days(resolved, "resolved_date", window)
    outcome_features = daily_outcomes.groupBy("customer_id", "as_of").agg(
        F.sum(F.col("escalated").cast("long")).alias("escalations_90d"),
        F.count(F.lit(1)).cast("long").alias("resolved_tickets_90d"),
        _rounded_ratio(F.sum(F.col("escalated").cast("long")), F.count("escalated"), 4).alias("escalation_rate_90d"))
    joined = ticket_features.join(outcome_features, ["customer_id", "as_of"], "full_outer")
    filled = joined.fillna(0, subset=["tickets_7d", "tickets_30d", "tickets_90d", "escalations_90d",
                                      "resolved_tickets_90d"])
    return _stamp(filled)
