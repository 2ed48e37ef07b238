"""Feature tables with their I/O: read silver for the window (plus 90 days back), replace the window."""

from __future__ import annotations

from datetime import timedelta

from pyspark.sql import SparkSession

from loopwise.lake.tables import DateRange, Lake, TableRef, WriteResult, overwrite_partitions
from loopwise.features import tables
from loopwise.pipelines import stages

ORDER_FEATURES = "features_customer_orders"
SUPPORT_FEATURES = "features_customer_support"


def feature_table(lake: Lake, name: str) -> TableRef:
    return lake.table(name)


def _history(window: DateRange) -> DateRange:
    return DateRange(window.start - timedelta(days=tables.LOOKBACK_DAYS - 1), window.end)


def _silver(spark: SparkSession, lake: Lake, source: str, window: DateRange):  # type: ignore[no-untyped-def]
    table = stages.silver_table(lake, source)
    return stages.read_window(spark, table, window)


def build_order_features(spark: SparkSession, lake: Lake, window: DateRange) -> WriteResult:
    """Customer order features as of the end of each day in `window`."""
    orders = _silver(spark, lake, "orders", _history(window))
    first = tables.first_order_dates(_silver(spark, lake, "orders", DateRange(DateRange.EPOCH, window.end)))
    features = tables.customer_order_features(orders, first, window)
    return overwrite_partitions(features, feature_table(lake, ORDER_FEATURES), window)


def build_support_features(spark: SparkSession, lake: Lake, window: DateRange) -> WriteResult:
    """Customer support features as of the end of each day in `window`."""
    history = _history(window)
    tickets = _silver(spark, lake, "tickets", history)
    outcomes = _silver(spark, lake, "ticket_outcomes", history)
    features = tables.customer_support_features(tickets, outcomes, window)
    return overwrite_partitions(features, feature_table(lake, SUPPORT_FEATURES), window)
