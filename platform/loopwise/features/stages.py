"""Feature tables, online pushes and training sets, with their I/O.

A feature table reads the silver history its declaration asks for and replaces exactly the window.
A training set is a model's labelled entity rows joined, as of each row's time, with its feature
service through Feast; every write records the Delta versions it read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from loopwise.features import online
from loopwise.lake.tables import DateRange, Lake, WriteResult, overwrite_partitions, overwrite_partitions_arrow
from loopwise.pipelines import stages
from loopwise.usecase import FeatureTable, ModelSpec, Reader


def silver_reader(reads: stages.PinnedReads, lake: Lake) -> Reader:
    """Read a source's silver table by the source's name, for a window or whole, pinned and recorded."""
    def read(source: str, window: DateRange | None = None) -> DataFrame:
        return reads.read(stages.silver_table(lake, source), window)

    return read


def build_feature_table(spark: SparkSession, lake: Lake, table: FeatureTable, window: DateRange) -> WriteResult:
    """A feature table's rows as of the end of each day in `window`."""
    reads = stages.PinnedReads(spark)
    features = table.build(silver_reader(reads, lake), window)
    return overwrite_partitions(features, lake.table(table.name), window, inputs=reads.versions)


def push_online(store: Any, lake: Lake, table: FeatureTable, window: DateRange) -> online.PushResult:
    """Push the window's newest row per entity of a feature table into the online store."""
    return online.push(store, table.view, lake.table(table.name).read(predicate=window))


@dataclass
class TrainingSet:
    """What a training set holds and exactly what it was built from."""

    write: WriteResult
    positives: int
    service: str

    @property
    def label_rate(self) -> float:
        return self.positives / self.write.rows if self.write.rows else 0.0

    @property
    def input_versions(self) -> dict[str, int]:
        return self.write.inputs


def service_feature_tables(store: Any, service: str, tables: tuple[FeatureTable, ...]) -> list[FeatureTable]:
    """The feature tables behind a Feast feature service's views."""
    views = {p.name for p in store.get_feature_service(service).feature_view_projections}
    return [t for t in tables if t.view in views]


def build_training_set(spark: SparkSession, lake: Lake, store: Any, spec: ModelSpec,
                       feature_tables: tuple[FeatureTable, ...]) -> TrainingSet:
    """The model's labelled rows joined, as of each row's `event_timestamp`, with its feature service (Feast)."""
    from loopwise.features.store import historical_features

    reads = stages.PinnedReads(spark)
    entity_df = spec.rows(silver_reader(reads, lake)).toPandas()
    if entity_df.empty:
        raise ValueError(f"{spec.name}: no labelled rows yet (materialize {', '.join(spec.reads)} first)")
    missing = [c for c in ("event_timestamp", spec.label, spec.split_key, "partition_date") if c not in entity_df]
    if missing:
        raise ValueError(f"{spec.name}: its rows() returned no column {missing}; see loopwise.usecase.ModelSpec")
    # Feast's offline store reads the feature tables at their current versions: record those.
    versions = dict(reads.versions)
    for table in service_feature_tables(store, spec.feature_service, feature_tables):
        versions[table.name] = lake.table(table.name).current_version()
    joined = historical_features(store, entity_df, spec.feature_service)
    data = pa.Table.from_pandas(joined.sort_values(spec.split_key).reset_index(drop=True), preserve_index=False)
    window = DateRange(min(entity_df["partition_date"]), max(entity_df["partition_date"]))
    write = overwrite_partitions_arrow(data, lake.table(spec.training_table), DateRange(DateRange.EPOCH, window.end),
                                       inputs={k: v for k, v in versions.items() if v is not None})
    return TrainingSet(write, int(joined[spec.label].sum()), spec.feature_service)
