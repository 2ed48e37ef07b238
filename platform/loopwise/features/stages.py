"""Feature tables, online pushes and training sets, with their I/O.

Feature tables read silver for the window plus 90 days back and replace exactly the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from loopwise.features import online, tables
from loopwise.lake.tables import (
    DateRange,
    Lake,
    TableRef,
    WriteResult,
    overwrite_partitions,
    overwrite_partitions_arrow,
)
from loopwise.pipelines import stages

ORDER_FEATURES = "features_customer_orders"
SUPPORT_FEATURES = "features_customer_support"


def feature_table(lake: Lake, name: str) -> TableRef:
    return lake.table(name)


def _history(window: DateRange) -> DateRange:
    return DateRange(window.start - timedelta(days=tables.LOOKBACK_DAYS - 1), window.end)


def _silver(spark: SparkSession, lake: Lake, source: str, window: DateRange) -> DataFrame:
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


def push_online(store: Any, lake: Lake, view: str, table: str, window: DateRange) -> online.PushResult:
    """Push the window's newest row per entity of a feature table into the online store."""
    return online.push(store, view, feature_table(lake, table).read(predicate=window))


@dataclass
class TrainingSet:
    """What a training set holds and exactly what it was built from."""

    write: WriteResult
    positives: int
    service: str
    input_versions: dict[str, int | None]

    @property
    def label_rate(self) -> float:
        return self.positives / self.write.rows if self.write.rows else 0.0


TRAINING_SET = "training_set"
LABEL = "escalated"


def labelled_tickets(spark: SparkSession, lake: Lake) -> DataFrame:
    """Tickets whose outcome is known: the entity rows of a training set, timed at ticket creation."""
    tickets = spark.read.format("delta").load(stages.silver_table(lake, "tickets").uri)
    outcomes = spark.read.format("delta").load(stages.silver_table(lake, "ticket_outcomes").uri)
    return (tickets.join(outcomes.select("ticket_id", "escalated", "resolved_at"), "ticket_id")
            .select("ticket_id", "customer_id", F.col("created_at").alias("event_timestamp"), "channel", "text",
                    LABEL, "resolved_at", F.col("created_date").alias("partition_date")))


def build_training_set(spark: SparkSession, lake: Lake, store: Any, service: str) -> TrainingSet:
    """Labels joined, as of each ticket's creation, with the feature service's features (Feast)."""
    from loopwise.features.store import historical_features

    inputs = [stages.silver_table(lake, "tickets"), stages.silver_table(lake, "ticket_outcomes"),
              feature_table(lake, ORDER_FEATURES), feature_table(lake, SUPPORT_FEATURES)]
    versions = {t.name: t.current_version() for t in inputs}
    entity_df = labelled_tickets(spark, lake).toPandas()
    if entity_df.empty:
        raise ValueError("no labelled tickets yet: materialize silver_tickets and silver_ticket_outcomes first")
    joined = historical_features(store, entity_df, service)
    data = pa.Table.from_pandas(joined.sort_values("ticket_id").reset_index(drop=True), preserve_index=False)
    window = DateRange(min(entity_df["partition_date"]), max(entity_df["partition_date"]))
    write = overwrite_partitions_arrow(data, lake.table(TRAINING_SET), DateRange(DateRange.EPOCH, window.end))
    return TrainingSet(write, int(joined[LABEL].sum()), service, versions)
