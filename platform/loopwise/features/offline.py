"""Feast's offline store for the Loopwise lake: point-in-time joins on Spark Connect over Delta.

Feast's file (Dask) offline store cannot serve this lake, as checked with Feast 0.67 here:
it reads a `DeltaFormat` source with `dd.read_parquet` on the folder, ignoring the Delta log,
so files a re-run removed from the table are read as live rows; and its historical join fails
("Divisions calculation failed for non-numeric column '__event_timestamp'") whenever an entity
has no row in a feature view, which new entities always have. This store plugs in through
Feast's offline-store extension point, so `FeatureStore.get_historical_features` and
`materialize` work unchanged, and it runs on the same engine as every other transform.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
from feast.data_source import DataSource
from feast.feature_view import FeatureView
from feast.infra.offline_stores.offline_store import OfflineStore, RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from pydantic import StrictStr
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from loopwise.spark import connect

ROW = "__loopwise_row"
FEATURE_TS = "__feature_ts"


class LakeOfflineStoreConfig(FeastConfigBaseModel):
    """Offline store settings: the Spark Connect URL (empty: the embedded Sail server)."""

    type: Literal["loopwise.features.offline.LakeOfflineStore"] = "loopwise.features.offline.LakeOfflineStore"
    spark_remote: StrictStr | None = None


class LakeRetrievalJob(RetrievalJob):
    """A lazily computed retrieval: the Spark job runs when the result is asked for."""

    def __init__(self, compute: Callable[[], pa.Table], full_feature_names: bool = False,
                 metadata: RetrievalMetadata | None = None) -> None:
        self._compute, self._full_feature_names, self._metadata = compute, full_feature_names, metadata

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._compute().to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)  # ints stay ints with nulls

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        return self._compute()

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return []

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return self._metadata

    def persist(self, storage: Any, allow_overwrite: bool = False, timeout: int | None = None) -> None:
        raise NotImplementedError("write the result to the lake with loopwise.lake instead")


def _session(config: RepoConfig) -> Any:
    return connect(getattr(config.offline_store, "spark_remote", None))


def _source(config: RepoConfig, source: DataSource) -> DataFrame:
    return _session(config).read.format("delta").load(source.path)  # through the Delta log


def _timestamp_column(entity_df: pd.DataFrame) -> str:
    if "event_timestamp" in entity_df.columns:
        return "event_timestamp"
    for name, dtype in entity_df.dtypes.items():
        if pd.api.types.is_datetime64_any_dtype(dtype):
            return str(name)
    raise ValueError("the entity dataframe needs an event_timestamp column (or one datetime column)")


def point_in_time_join(entity: DataFrame, timestamp: str, views: list[tuple[FeatureView, list[str], DataFrame]],
                       full_feature_names: bool) -> DataFrame:
    """For each entity row and view, the latest feature row at or before its timestamp, within the TTL."""
    result = entity
    for view, features, source in views:
        keys = [c.name for c in view.entity_columns]
        ts_field = view.batch_source.timestamp_field
        rows = source.select(*keys, F.col(ts_field).alias(FEATURE_TS), *features)
        condition = [entity[k] == rows[k] for k in keys] + [rows[FEATURE_TS] <= entity[timestamp]]
        if view.ttl and view.ttl.total_seconds() > 0:
            condition.append(rows[FEATURE_TS] > entity[timestamp] - F.expr(f"INTERVAL {int(view.ttl.total_seconds())} SECONDS"))
        candidates = entity.select(ROW, timestamp, *keys).alias("e").join(rows.alias("f"), condition, "inner")
        latest = (candidates.withColumn("__rank", F.row_number().over(Window.partitionBy(ROW).orderBy(F.col(FEATURE_TS).desc())))
                  .where(F.col("__rank") == 1))
        name = view.projection.name_to_use()
        result = result.join(latest.select(ROW, *[F.col(f"f.{f}").alias(f"{name}__{f}" if full_feature_names else f)
                                                  for f in features]), ROW, "left")
    return result


class LakeOfflineStore(OfflineStore):
    """Point-in-time retrieval and latest-row pulls over the lake's Delta tables, on Spark Connect."""

    @staticmethod
    def get_historical_features(config: RepoConfig, feature_views: list[FeatureView], feature_refs: list[str],
                                entity_df: pd.DataFrame | str, registry: BaseRegistry, project: str,
                                full_feature_names: bool = False, **kwargs: Any) -> RetrievalJob:
        if not isinstance(entity_df, pd.DataFrame):
            raise ValueError("the Loopwise offline store takes the entity dataframe as a pandas DataFrame")

        def compute() -> pa.Table:
            spark = _session(config)
            timestamp = _timestamp_column(entity_df)
            frame = entity_df.copy()
            frame[timestamp] = pd.to_datetime(frame[timestamp], utc=True)
            frame[ROW] = range(len(frame))
            entity = spark.createDataFrame(frame)
            views = []
            for view in feature_views:
                name = view.projection.name_to_use()
                features = [ref.split(":", 1)[1] for ref in feature_refs if ref.split(":", 1)[0] == name]
                views.append((view, features, _source(config, view.batch_source)))
            joined = point_in_time_join(entity, timestamp, views, full_feature_names)
            return joined.orderBy(ROW).drop(ROW).toArrow()

        return LakeRetrievalJob(compute, full_feature_names)

    @staticmethod
    def pull_latest_from_table_or_query(config: RepoConfig, data_source: DataSource, join_key_columns: list[str],
                                        feature_name_columns: list[str], timestamp_field: str,
                                        created_timestamp_column: str | None, start_date: datetime,
                                        end_date: datetime) -> RetrievalJob:
        def compute() -> pa.Table:
            rows = _source(config, data_source).where(
                (F.col(timestamp_field) >= F.lit(start_date)) & (F.col(timestamp_field) < F.lit(end_date)))
            order = [F.col(timestamp_field).desc()] + ([F.col(created_timestamp_column).desc()] if created_timestamp_column else [])
            latest = (rows.withColumn("__rank", F.row_number().over(Window.partitionBy(*join_key_columns).orderBy(*order)))
                      .where(F.col("__rank") == 1))
            extra = [created_timestamp_column] if created_timestamp_column else []
            return latest.select(*join_key_columns, *feature_name_columns, timestamp_field, *extra).toArrow()

        return LakeRetrievalJob(compute)

    @staticmethod
    def pull_all_from_table_or_query(config: RepoConfig, data_source: DataSource, join_key_columns: list[str],
                                     feature_name_columns: list[str], timestamp_field: str,
                                     created_timestamp_column: str | None = None, start_date: datetime | None = None,
                                     end_date: datetime | None = None, **kwargs: Any) -> RetrievalJob:
        def compute() -> pa.Table:
            rows = _source(config, data_source)
            if start_date is not None:
                rows = rows.where(F.col(timestamp_field) >= F.lit(start_date))
            if end_date is not None:
                rows = rows.where(F.col(timestamp_field) < F.lit(end_date))
            extra = [created_timestamp_column] if created_timestamp_column else []
            return rows.select(*join_key_columns, *feature_name_columns, timestamp_field, *extra).toArrow()

        return LakeRetrievalJob(compute)
