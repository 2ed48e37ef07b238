"""The data layer's stages with their I/O: each reads its inputs for a window and replaces
exactly that window in its output table, so re-running a stage is idempotent."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from loopwise.contracts import SourceContract
from loopwise.lake.tables import (
    DateRange,
    Lake,
    TableRef,
    WriteResult,
    overwrite_partitions,
    overwrite_partitions_arrow,
)
from loopwise.landing import zone
from loopwise.pipelines import transforms
from loopwise.usecase import Source
from loopwise.validation.suites import ValidationReport, validate

log = logging.getLogger(__name__)

QUARANTINE_TABLE = "quarantine"
QUARANTINE_PARTITIONS = ("source", "partition_date")


def raw_table(lake: Lake, source: str) -> TableRef:
    return lake.table(f"raw_{source}")


def bronze_table(lake: Lake, source: str) -> TableRef:
    return lake.table(f"bronze_{source}")


def silver_table(lake: Lake, source: str) -> TableRef:
    return lake.table(f"silver_{source}")


def quarantine_table(lake: Lake) -> TableRef:
    return lake.table(QUARANTINE_TABLE, partition_by=QUARANTINE_PARTITIONS)


@dataclass
class RawResult:
    """What a raw ingest read and committed, with any schema change in the landed files."""

    write: WriteResult
    files: list[str]
    missing_columns: dict[str, list[str]] = field(default_factory=dict)
    extra_columns: dict[str, list[str]] = field(default_factory=dict)


def ingest_raw(lake: Lake, landing_root: Path, contract: SourceContract, window: DateRange) -> RawResult:
    """Read each day's landing file as landed and replace those days in `raw_<source>`."""
    tables, files, missing, extra = [], [], {}, {}
    for day in window.days():
        path = zone.find_landing_file(landing_root, contract.name, day)
        landed = zone.read_landing_file(path, contract)
        files.append(str(path))
        if landed.missing_columns:
            missing[day.isoformat()] = landed.missing_columns
        if landed.extra_columns:
            extra[day.isoformat()] = landed.extra_columns
        rows = landed.table.num_rows
        # Constant per file: repeated scalars, no Python list of 10 M values.
        tables.append(landed.table.append_column("partition_date", pa.repeat(pa.scalar(day, pa.date32()), rows))
                      .append_column("_source_file", pa.repeat(pa.scalar(path.name, pa.string()), rows)))
        log.info("read %s rows of %s from %s", rows, contract.name, path)
    write = overwrite_partitions_arrow(pa.concat_tables(tables), raw_table(lake, contract.name), window)
    return RawResult(write, files, missing, extra)


@dataclass
class BronzeResult:
    """What a bronze build validated, kept, quarantined and committed."""

    write: WriteResult
    validation: ValidationReport
    quarantine_version: int
    max_bad_row_fraction: float

    @property
    def passed(self) -> bool:
        return self.validation.bad_fraction <= self.max_bad_row_fraction


class PinnedReads:
    """Delta tables read for one stage, each pinned to the version current at its first read.

    The versions are what the stage records for lineage, so a trace stays exact after later writes.
    """

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark
        self.versions: dict[str, int] = {}

    def read(self, table: TableRef, window: DateRange | None = None) -> DataFrame:
        version = self.versions.get(table.name)
        if version is None:
            version = table.current_version()
            if version is None:
                raise FileNotFoundError(f"table {table.name} does not exist yet at {table.uri} (materialize the "
                                        f"asset {table.name}{f' for {window}' if window else ''} first)")
            self.versions[table.name] = version
        df = self.spark.read.format("delta").option("versionAsOf", version).load(table.uri)
        return df if window is None else df.where(window.predicate(table.partition_column))


def read_window(spark: SparkSession, table: TableRef, window: DateRange) -> DataFrame:
    return PinnedReads(spark).read(table, window)


def bad_rows_frame(spark: SparkSession, report: ValidationReport) -> DataFrame:
    rows = [(day, line, "; ".join(names)) for (day, line), names in sorted(report.failures.items())]
    return spark.createDataFrame(rows, "partition_date date, _line long, failed_expectations string")


def build_bronze(spark: SparkSession, lake: Lake, contract: SourceContract, window: DateRange,
                 max_bad_row_fraction: float, now: datetime | None = None) -> BronzeResult:
    """Validate raw rows; typed good rows replace the window in bronze, bad rows go to quarantine."""
    reads = PinnedReads(spark)
    raw = reads.read(raw_table(lake, contract.name), window)
    report = validate(raw, contract)
    bad = bad_rows_frame(spark, report)
    write = overwrite_partitions(transforms.bronze(raw, bad, contract), bronze_table(lake, contract.name), window,
                                 inputs=reads.versions)
    at = now or datetime.now(UTC).replace(tzinfo=None)
    quarantined = transforms.quarantine(raw, bad, contract.name, at)
    q = overwrite_partitions(quarantined, quarantine_table(lake), window, where={"source": contract.name})
    log.info("bronze_%s %s: %s rows kept, %s quarantined", contract.name, window, write.rows, report.bad_rows)
    return BronzeResult(write, report, q.version, max_bad_row_fraction)


def build_silver(spark: SparkSession, lake: Lake, source: Source, window: DateRange) -> WriteResult:
    """Conform bronze rows of the window into `silver_<source>` with the source's silver transform."""
    reads = PinnedReads(spark)
    bronze = reads.read(bronze_table(lake, source.name), window)
    return overwrite_partitions(source.silver(bronze), silver_table(lake, source.name), window, inputs=reads.versions)


def quarantine_counts(lake: Lake) -> dict[str, int]:
    """Quarantined rows per source, over every partition."""
    table = quarantine_table(lake)
    if not table.exists():
        return {}
    counts = table.read().group_by("source").aggregate([("line", "count")])
    return dict(zip(counts["source"].to_pylist(), counts["line_count"].to_pylist(), strict=True))

