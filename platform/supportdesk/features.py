"""The support desk's customer feature tables, as of the end of each day (PySpark windows).

The feature names are Feast's (feature_repo/feature_views.py); these functions compute them.
Escalation counts only outcomes resolved by the end of the as-of day: a label not yet known
then is never a feature.
"""

from __future__ import annotations

from loopwise.features.windows import as_of_days, cents, history, rounded_ratio, stamp, within
from loopwise.lake.tables import DateRange
from loopwise.usecase import Reader
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from supportdesk.contracts import CHANNELS

LOOKBACK_DAYS = 90
ORDER_FEATURES = "features_customer_orders"
SUPPORT_FEATURES = "features_customer_support"


def customer_order_features(orders: DataFrame, first_orders: DataFrame, window: DateRange) -> DataFrame:
    """Order behaviour per customer over 7/30/90 days, as of the end of each day in `window`.

    `orders`: silver orders from 90 days before the window through its end; `first_orders`:
    each customer's first order date ever (for tenure).
    """
    daily = as_of_days(orders, "order_date", window, LOOKBACK_DAYS)
    count = lambda days: F.sum(F.when(within(days), 1).otherwise(0)).cast("long")
    amount = cents(F.col("amount_eur"))
    n = F.count(F.lit(1))
    rate = lambda flag: rounded_ratio(F.sum(F.col(flag).cast("long")), F.count(flag), 4)  # avg() semantics: nulls skipped
    features = daily.groupBy("customer_id", "as_of").agg(
        count(7).alias("orders_7d"),
        count(30).alias("orders_30d"),
        n.cast("long").alias("orders_90d"),
        (F.sum(F.when(within(30), amount).otherwise(0)) / 100.0).alias("amount_eur_sum_30d"),
        (F.sum(amount) / 100.0).alias("amount_eur_sum_90d"),
        rounded_ratio(F.sum(amount), n * 100, 2).alias("amount_eur_mean_90d"),
        rate("is_refunded").alias("refund_rate_90d"),
        rate("is_cancelled").alias("cancel_rate_90d"),
        F.min("age_days").cast("long").alias("days_since_last_order"),
    )
    tenure = F.datediff(F.col("as_of"), F.col("first_order_date")).cast("long")
    return stamp(features.join(first_orders, "customer_id", "left").withColumn("tenure_days", tenure)
                  .drop("first_order_date"))


def first_order_dates(orders: DataFrame) -> DataFrame:
    return orders.groupBy("customer_id").agg(F.min("order_date").alias("first_order_date"))


def customer_support_features(tickets: DataFrame, outcomes: DataFrame, window: DateRange) -> DataFrame:
    """Support behaviour per customer, as of the end of each day in `window`.

    Escalation counts only outcomes resolved by the end of the as-of day: a label not yet
    known then is never a feature.
    """
    daily_tickets = as_of_days(tickets, "created_date", window, LOOKBACK_DAYS)
    count = lambda days: F.sum(F.when(within(days), 1).otherwise(0))
    recent = F.count(F.when(within(30), F.col("channel")))
    shares = [rounded_ratio(F.sum(F.when(within(30), (F.col("channel") == c).cast("long")).otherwise(0)), recent, 4)
              .alias(f"share_{c}_30d") for c in CHANNELS]
    ticket_features = daily_tickets.groupBy("customer_id", "as_of").agg(
        count(7).cast("long").alias("tickets_7d"), count(30).cast("long").alias("tickets_30d"),
        F.count(F.lit(1)).cast("long").alias("tickets_90d"), *shares)
    resolved = (outcomes.join(tickets.select("ticket_id", "customer_id"), "ticket_id")
                .select("customer_id", "escalated", F.col("resolved_date")))
    daily_outcomes = as_of_days(resolved, "resolved_date", window, LOOKBACK_DAYS)
    outcome_features = daily_outcomes.groupBy("customer_id", "as_of").agg(
        F.sum(F.col("escalated").cast("long")).alias("escalations_90d"),
        F.count(F.lit(1)).cast("long").alias("resolved_tickets_90d"),
        rounded_ratio(F.sum(F.col("escalated").cast("long")), F.count("escalated"), 4).alias("escalation_rate_90d"))
    joined = ticket_features.join(outcome_features, ["customer_id", "as_of"], "full_outer")
    filled = joined.fillna(0, subset=["tickets_7d", "tickets_30d", "tickets_90d", "escalations_90d",
                                      "resolved_tickets_90d"])
    return stamp(filled)


def build_order_features(read: Reader, window: DateRange) -> DataFrame:
    """Customer order features as of the end of each day in `window`."""
    orders = read("orders", history(window, LOOKBACK_DAYS))
    first = first_order_dates(read("orders", DateRange(DateRange.EPOCH, window.end)))
    return customer_order_features(orders, first, window)


def build_support_features(read: Reader, window: DateRange) -> DataFrame:
    """Customer support features as of the end of each day in `window`."""
    days = history(window, LOOKBACK_DAYS)
    return customer_support_features(read("tickets", days), read("ticket_outcomes", days), window)
