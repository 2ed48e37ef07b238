"""Delta tables: idempotent partition writes, versions, history and an explicit schema guard.

Spark (Sail or Apache Spark) writes the transformed tables; `deltalake` (delta-rs, no JVM) writes
raw ingests and reads versions and history, which Sail refuses (`DESCRIBE HISTORY`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.dataset as pads
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

PARTITION_COLUMN = "partition_date"


class SchemaChangeError(ValueError):
    """Landed data would change a table's schema in a way that cannot be applied safely."""


@dataclass(frozen=True)
class DateRange:
    """An inclusive range of partition dates (one day, or a backfill's window)."""

    start: date
    end: date

    EPOCH = date(1970, 1, 1)  # the start of "all history"

    @classmethod
    def of(cls, day: date) -> DateRange:
        return cls(day, day)

    def predicate(self, column: str = PARTITION_COLUMN) -> str:
        if self.start == self.end:
            return f"{column} = '{self.start.isoformat()}'"
        return f"{column} >= '{self.start.isoformat()}' AND {column} <= '{self.end.isoformat()}'"

    def days(self) -> list[date]:
        return [date.fromordinal(o) for o in range(self.start.toordinal(), self.end.toordinal() + 1)]

    def __str__(self) -> str:
        return self.start.isoformat() if self.start == self.end else f"{self.start}..{self.end}"


@dataclass(frozen=True)
class TableRef:
    """A Delta table in the lake, partitioned by date."""

    name: str
    uri: str
    storage_options: dict[str, str] = field(default_factory=dict)
    partition_column: str = PARTITION_COLUMN
    partition_by: tuple[str, ...] = (PARTITION_COLUMN,)

    def delta(self) -> DeltaTable | None:
        try:
            return DeltaTable(self.uri, storage_options=self.storage_options or None)
        except TableNotFoundError:
            return None

    def exists(self) -> bool:
        return self.delta() is not None

    def current_version(self) -> int | None:
        table = self.delta()
        return None if table is None else table.version()

    def schema(self) -> dict[str, str]:
        table = self.delta()
        if table is None:
            return {}
        return {f.name: str(f.type) for f in _arrow_schema(table)}

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        table = self.delta()
        return [] if table is None else table.history(limit)

    def read(self, version: int | None = None, predicate: DateRange | None = None) -> pa.Table:
        """Read (part of) the table without Spark, optionally as of a version."""
        table = DeltaTable(self.uri, version=version, storage_options=self.storage_options or None)
        filters = None
        if predicate is not None:
            filters = [(self.partition_column, ">=", predicate.start), (self.partition_column, "<=", predicate.end)]
        return table.to_pyarrow_table(filters=filters)

    def count(self, predicate: DateRange | None = None) -> int:
        return self.read(predicate=predicate).num_rows if self.exists() else 0


@dataclass(frozen=True)
class WriteResult:
    """What a partition write committed."""

    table: str
    version: int
    rows: int
    partitions: str
    added_columns: list[str] = field(default_factory=list)
    schema: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, int] = field(default_factory=dict)  # the Delta version of each table the write read


class Lake:
    """The root of every Delta table the platform writes."""

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.storage_options = dict(storage_options or {})

    def table(self, name: str, partition_by: tuple[str, ...] = (PARTITION_COLUMN,)) -> TableRef:
        return TableRef(name, f"{self.uri}/{name}", self.storage_options, partition_by=partition_by)


def _arrow_schema(table: DeltaTable) -> pa.Schema:
    return pa.schema(table.schema().to_arrow())  # delta-rs returns arro3 types


def _guard_schema(table: TableRef, incoming: pa.Schema) -> list[str]:
    """Add new columns explicitly and refuse type changes, so nothing is dropped silently.

    Sail ignores `mergeSchema` (a new column was silently dropped when tried), so schema
    evolution is applied with delta-rs before the write.
    """
    existing = table.delta()
    if existing is None:
        return []
    current = {f.name: f for f in _arrow_schema(existing)}
    changed = [f"{f.name}: {current[f.name].type} -> {f.type}" for f in incoming
               if f.name in current and not current[f.name].type.equals(f.type)
               and not (pa.types.is_large_string(current[f.name].type) and pa.types.is_string(f.type))
               and not (pa.types.is_string_view(current[f.name].type) and pa.types.is_string(f.type))]
    if changed:
        raise SchemaChangeError(
            f"table {table.name} ({table.uri}) would change column types: {', '.join(changed)}; "
            "migrate the table explicitly or land data that matches its contract"
        )
    added = [f for f in incoming if f.name not in current]
    if added:
        from deltalake.schema import Field

        existing.alter.add_columns([Field.from_arrow(f) for f in added])
    return [f.name for f in added]


def _spark_arrow_schema(df: DataFrame) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(df.schema, timezone="UTC")


def _replace_predicate(table: TableRef, window: DateRange, where: dict[str, str] | None) -> str:
    clauses = [f"{k} = '{v}'" for k, v in (where or {}).items()]
    return " AND ".join([*clauses, window.predicate(table.partition_column)])


def overwrite_partitions(df: DataFrame, table: TableRef, window: DateRange,
                         where: dict[str, str] | None = None, inputs: dict[str, int] | None = None) -> WriteResult:
    """Replace exactly the partitions in `window` (and `where`) with `df`; return the committed version.

    Delta commits atomically: a write killed midway leaves the table at its previous version.
    """
    added = _guard_schema(table, _spark_arrow_schema(df))
    writer = df.write.format("delta").partitionBy(*table.partition_by).mode("overwrite")
    if table.exists():
        writer = writer.option("replaceWhere", _replace_predicate(table, window, where))
    writer.save(table.uri)
    return _result(table, window, added, where, inputs)


def overwrite_partitions_arrow(data: pa.Table, table: TableRef, window: DateRange,
                               where: dict[str, str] | None = None, inputs: dict[str, int] | None = None) -> WriteResult:
    """The same contract as `overwrite_partitions`, for data already in Python (delta-rs)."""
    added = _guard_schema(table, data.schema)
    write_deltalake(
        table.uri, data, mode="overwrite", partition_by=list(table.partition_by),
        predicate=_replace_predicate(table, window, where) if table.exists() else None,
        storage_options=table.storage_options or None,
    )
    return _result(table, window, added, where, inputs)


def _result(table: TableRef, window: DateRange, added: list[str], where: dict[str, str] | None,
            inputs: dict[str, int] | None) -> WriteResult:
    delta = table.delta()
    assert delta is not None, f"{table.uri} has no Delta log after a write"
    column = pads.field(table.partition_column)
    condition = (column >= window.start) & (column <= window.end)
    for key, value in (where or {}).items():
        condition = condition & (pads.field(key) == value)
    rows = delta.to_pyarrow_dataset().count_rows(filter=condition)
    return WriteResult(table.name, delta.version(), rows, str(window), added, table.schema(), dict(inputs or {}))
