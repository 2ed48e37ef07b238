"""The data layer from landing files to silver: Loopwise (its landing reader, then Sail) against Apache Spark.

Also the feature layer's order features from the silver orders (a windowed aggregation).

Ten days of CSV landing files per source (10 M order rows and 1 M tickets in all) are landed first, as
`loopwise land --bad-rows 0.001` lands them: the engine's `malformed.inject` (every kind of malformed row:
missing and repeated ids, bad timestamps, bad amounts, unknown enum values, truncated lines, wrong
encodings) and `zone.write_landing_file`. Each day's rows are tiled from one real synthetic day with
their ids made unique; injecting takes some 13 s per million rows, so the first day's file of each
source is copied for the other nine days.

Landing -> raw. Loopwise runs its raw ingest (`stages.ingest_raw`: the RFC 4180 Arrow reader, with each
record's line number, landed text, field shortfall and key occurrence, committed to a Delta table by
delta-rs). The peer reads the same files with Apache Spark's own CSV reader (header, multi-line
quoting, every column a string) and writes them as Parquet: it records none of those columns, so it does
less work, and validation cannot run on what it wrote. Both engines' later stages therefore read the
one raw table Loopwise wrote (its Parquet files: a Delta table written once has no removed files).

Raw -> bronze -> silver. Both engines run the same code from `loopwise.pipelines` (validation, bronze,
quarantine, silver) and write Parquet (Apache Spark here has no Delta JAR: Maven is unreachable),
snappy-compressed as the lake's Delta files are on both engines (Sail's plain Parquet default is zstd),
so they do identical work. A checksum of every output row proves identical results. Appends the
timings and ratios to RESULTS.md.

    python benchmarks/data_layer.py [--orders 10000000] [--tickets 1000000] [--spark-memory 8g]
                                    [--apache-conf KEY=VALUE ...] [--no-record]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import date, datetime, timedelta
from functools import reduce
from pathlib import Path

import numpy as np
import pandas as pd
from common import RESULTS, commit, load_average, machine
from loopwise.lake.tables import DateRange, Lake
from loopwise.landing import malformed, zone
from loopwise.pipelines import stages, transforms
from loopwise.spark import connect, engine_version
from loopwise.validation.suites import validate
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DecimalType
from supportdesk import USE_CASE
from supportdesk.features import customer_order_features, first_order_dates
from supportdesk.feed import generate_day

START = date(2026, 3, 2)
DAYS = 10
WINDOW = DateRange(START, START + timedelta(days=DAYS - 1))
SOURCES = ("orders", "tickets")
BAD_ROWS = 0.001  # as `loopwise land --bad-rows 0.001`


def land(root: Path, rows: dict[str, int], seed: int = 1) -> None:
    """Land `rows[source]` rows of each source over ten days of CSV files, as `loopwise land` does.

    The first day's file of each source is written and copied for the other days (see the module's docstring).
    """
    feed = generate_day(START, 4000, seed=seed).frames
    for source, total in rows.items():
        contract = USE_CASE.source(source).contract
        per_day = total // DAYS
        base = feed[source][list(contract.column_names)]
        frame = pd.concat([base] * -(-per_day // len(base)), ignore_index=True).iloc[:per_day].copy()
        frame[contract.key] = frame[contract.key] + "-" + pd.Series(np.arange(per_day)).astype(str)
        records, _ = malformed.inject(frame, contract, BAD_ROWS, seed + START.toordinal(), "csv")
        first = zone.write_landing_file(root, contract, START, records, "csv")
        for day in WINDOW.days()[1:]:
            shutil.copyfile(first, zone.landing_path(root, source, day, "csv"))


def loopwise_raw(landing: Path, lake: Lake) -> dict[str, str]:
    """Loopwise's landing -> raw: the raw ingest of every source; returns each raw table's location."""
    for source in SOURCES:
        stages.ingest_raw(lake, landing, USE_CASE.source(source).contract, WINDOW)
    return {source: stages.raw_table(lake, source).uri for source in SOURCES}


def spark_csv_raw(spark: SparkSession, landing: Path, out: Path) -> dict[str, str]:
    """The peer's landing -> raw: Spark's CSV reader over the same files, written as Parquet; returns where."""
    for source in SOURCES:
        contract = USE_CASE.source(source).contract
        schema = ", ".join(f"`{c}` string" for c in contract.column_names)
        days = [spark.read.schema(schema).option("header", True).option("multiLine", True)
                .csv(str(zone.landing_path(landing, source, day, "csv")))
                .withColumn("partition_date", F.lit(day)).withColumn("_source_file", F.lit(f"{day.isoformat()}.csv"))
                for day in WINDOW.days()]
        reduce(DataFrame.unionAll, days).write.mode("overwrite").partitionBy("partition_date") \
            .option("compression", "snappy").parquet(str(out / f"raw_{source}"))
    return {source: str(out / f"raw_{source}") for source in SOURCES}


def checksum(df: DataFrame) -> tuple[int, int]:
    """Row count and an order-independent sum of every row's xxhash64 over all its columns.

    Both engines compute xxhash64 alike for the types here, except decimals wider than 18 digits
    (hashed as bytes that differ), which are hashed as their plain text. A CRC of every column's
    string form would not do: the engines format doubles differently (1.0E7 vs 10000000.0).
    """
    columns = [F.col(f.name).cast("string") if isinstance(f.dataType, DecimalType) else F.col(f.name)
               for f in df.schema.fields]
    row = df.select(F.count(F.lit(1)).alias("n"),
                    F.sum(F.xxhash64(*columns).cast("decimal(38,0)")).alias("h")).collect()[0]
    return int(row["n"]), int(row["h"])


def daily_customer_totals(orders: DataFrame) -> DataFrame:
    """The issue's reference workload: a daily per-customer aggregation of the raw order rows.

    `try_cast`: landed amounts include text such as `N/A`, which a plain cast refuses on Sail.
    """
    return (orders.groupBy("partition_date", "customer_id")
            .agg(F.count(F.lit(1)).alias("orders"), F.sum(F.col("amount").try_cast("decimal(12,2)")).alias("amount")))


def save(df: DataFrame, path: str) -> None:
    """Overwrite `path` with `df` as snappy Parquet, the codec of the lake's Delta files on both engines."""
    df.write.mode("overwrite").option("compression", "snappy").parquet(path)


def read_raw(spark: SparkSession, uri: str) -> DataFrame:
    """A raw Delta table's Parquet files; the partition column typed as a date, which Sail leaves a string."""
    return spark.read.parquet(uri).withColumn("partition_date", F.col("partition_date").cast("date"))


def run(spark: SparkSession, raw_uris: dict[str, str], out: Path) -> tuple[dict[str, float], dict[str, tuple[int, int]]]:
    """Raw -> bronze + quarantine -> silver on one engine, then the two workloads timed apart."""
    timings: dict[str, float] = {"validate": 0.0, "transforms": 0.0}
    sums: dict[str, tuple[int, int]] = {}
    for source, uri in raw_uris.items():
        contract = USE_CASE.source(source).contract
        raw = read_raw(spark, uri)
        sums[f"raw_{source}"] = checksum(raw)
        t = time.perf_counter()
        report = validate(raw, contract)
        timings["validate"] += time.perf_counter() - t
        steps = {}
        t = time.perf_counter()
        bad = stages.bad_rows_frame(spark, report)
        save(transforms.bronze(raw, bad, contract), str(out / f"bronze_{source}"))
        steps["bronze"] = time.perf_counter() - t
        save(transforms.quarantine(raw, bad, source, datetime(2026, 3, 12)), str(out / f"quarantine_{source}"))
        steps["quarantine"] = time.perf_counter() - t - sum(steps.values())
        bronze = spark.read.parquet(str(out / f"bronze_{source}"))
        save(USE_CASE.source(source).silver(bronze), str(out / f"silver_{source}"))
        steps["silver"] = time.perf_counter() - t - sum(steps.values())
        timings["transforms"] += time.perf_counter() - t
        print(f"  {source}: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
        for stage in ("bronze", "quarantine", "silver"):
            sums[f"{stage}_{source}"] = checksum(spark.read.parquet(str(out / f"{stage}_{source}")))
        print(f"  {source}: {report.rows:,} rows, {report.bad_rows:,} quarantined")
    silver = spark.read.parquet(str(out / "silver_orders"))
    extra = {  # timed apart from the total
        "daily_totals": ("daily per-customer totals of the raw orders",
                         daily_customer_totals(read_raw(spark, raw_uris["orders"]))),
        "features": ("order features (7/30/90-day windows, every day)",
                     customer_order_features(silver, first_order_dates(silver), WINDOW)),
    }
    for name, (label, df) in extra.items():
        t = time.perf_counter()
        save(df, str(out / name))
        timings[name] = time.perf_counter() - t
        sums[name] = checksum(spark.read.parquet(str(out / name)))
        print(f"  {label}: {timings[name]:.1f} s")
    return timings, sums


def key_value(text: str) -> str:
    if "=" not in text.strip("="):
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE, e.g. spark.sql.shuffle.partitions=200")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=10_000_000)
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--spark-memory", default="8g",
                        help="Apache Spark's driver memory (Spark's own default is 1g)")
    parser.add_argument("--no-record", action="store_true", help="print the figures, do not append to RESULTS.md")
    parser.add_argument("--apache-conf", action="append", default=[], metavar="KEY=VALUE", type=key_value,
                        help="more Apache Spark configuration, e.g. spark.sql.shuffle.partitions=200 (Spark's "
                             "default; Loopwise's local[N] sets 4)")
    args = parser.parse_args()
    import great_expectations  # noqa: F401 - its ~3 s import is not the engines' work
    apache_conf = {"spark.driver.memory": args.spark_memory, **dict(c.split("=", 1) for c in args.apache_conf)}
    apache_label = ", ".join([f"driver memory {args.spark_memory}", *args.apache_conf])

    load = load_average()
    work = Path(tempfile.mkdtemp(prefix="loopwise-bench-"))
    try:
        t = time.perf_counter()
        landing = work / "landing"
        land(landing, {"orders": args.orders, "tickets": args.tickets})
        size = sum(f.stat().st_size for f in landing.rglob("*.csv"))
        print(f"landed: {args.orders:,} orders, {args.tickets:,} tickets in {DAYS} days of CSV files, "
              f"{size / 1e6:,.0f} MB ({time.perf_counter() - t:.1f} s to land)")

        print("Loopwise: landing -> raw (Arrow reader, delta-rs), then Sail (embedded):")
        t = time.perf_counter()
        raw_uris = loopwise_raw(landing, Lake(str(work / "lake")))
        sail_raw = time.perf_counter() - t
        print(f"  landing -> raw {sail_raw:.1f} s")
        t = time.perf_counter()
        sail = connect(None)
        sail.range(1).collect()
        sail_start = time.perf_counter() - t
        sail_t, sail_sums = run(sail, raw_uris, work / "sail")
        print(f"  validate {sail_t['validate']:.1f} s, transforms {sail_t['transforms']:.1f} s")

        print(f"Apache Spark Connect local[2], {apache_label}:")
        t = time.perf_counter()
        apache = connect("local[2]", apache_conf)
        apache.range(1).collect()
        apache_start = time.perf_counter() - t
        sail_version, apache_version = engine_version(sail), engine_version(apache)
        if sail_version == apache_version:
            raise SystemExit(f"both sessions reached the same engine ({sail_version}): nothing would be compared")
        t = time.perf_counter()
        csv_raw = spark_csv_raw(apache, landing, work / "apache")
        apache_raw = time.perf_counter() - t
        csv_rows = {source: apache.read.parquet(uri).count() for source, uri in csv_raw.items()}
        print(f"  landing -> raw (Spark's CSV reader) {apache_raw:.1f} s: "
              + ", ".join(f"{n:,} {s}" for s, n in csv_rows.items()))
        apache_t, apache_sums = run(apache, raw_uris, work / "apache")
        print(f"  validate {apache_t['validate']:.1f} s, transforms {apache_t['transforms']:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    identical = sail_sums == apache_sums
    same_records = all(csv_rows[s] == sail_sums[f"raw_{s}"][0] for s in SOURCES)
    sail_t["raw"], apache_t["raw"] = sail_raw, apache_raw
    sail_t["start"], apache_t["start"] = sail_start, apache_start
    for times in (sail_t, apache_t):
        times["raw_to_silver"] = times["validate"] + times["transforms"]
        times["total"] = times["raw"] + times["raw_to_silver"]
        times["total_start"] = times["total"] + times["start"]
    ratio = {k: apache_t[k] / sail_t[k] for k in sail_t}
    print(f"identical results: {identical}; the same records landed -> raw on both: {same_records}")
    print(f"landing -> raw: Loopwise {sail_raw:.1f} s, Apache Spark's CSV reader {apache_raw:.1f} s, "
          f"ratio {ratio['raw']:.1f}x")
    print(f"landing -> silver (raw, GX validation, transforms): Loopwise {sail_t['total']:.1f} s, "
          f"Apache Spark {apache_t['total']:.1f} s, ratio {ratio['total']:.1f}x")

    def line(label: str, key: str) -> str:
        return f"| {label} | {sail_t[key]:.1f} s | {apache_t[key]:.1f} s | {ratio[key]:.1f}x |\n"

    quarantined = {s: sail_sums[f"quarantine_{s}"][0] for s in SOURCES}
    entry = (
        f"\n## data_layer.py — {datetime.now():%Y-%m-%d %H:%M} — commit {commit()}\n"
        f"Machine: {machine()}. Inputs: {args.orders:,} order rows and {args.tickets:,} tickets landed as "
        f"CSV, {DAYS} days, {size / 1e6:,.0f} MB, {BAD_ROWS:.1%} malformed of every kind `loopwise land --bad-rows` "
        f"injects ({quarantined['orders']:,} orders and {quarantined['tickets']:,} tickets quarantined).\n\n"
        f"Load average when it started: {load}.\n\n"
        f"| step | Loopwise: landing reader + delta-rs, then Sail (embedded) "
        f"| Apache Spark Connect local[2], {apache_label} | ratio |\n"
        "|---|---|---|---|\n"
        + line("landing -> raw (Loopwise: Arrow RFC 4180 reader with line numbers and landed text, to Delta; "
               "Apache Spark: its CSV reader, multi-line, to Parquet)", "raw")
        + line("GX validation (row-level)", "validate")
        + line("bronze + quarantine + silver transforms", "transforms")
        + line("raw -> silver (validation + transforms: the total of earlier entries)", "raw_to_silver")
        + line("**landing -> silver total**", "total")
        + line("engine start (not in the total)", "start")
        + line("total with engine start: what one run in a fresh process pays", "total_start")
        + line("order features from silver (not in the total)", "features")
        + line("daily per-customer totals of the raw orders (not in the total)", "daily_totals")
        + f"\nEngines: {sail_version} and Apache Spark {apache_version}. Identical results (row count and xxhash64 "
        f"sum of every output row, per table, both engines reading Loopwise's raw tables): {identical}. "
        f"Spark's CSV reader found the same number of records as Loopwise's: {same_records}.\n"
    )
    print(entry)
    if not args.no_record:
        with RESULTS.open("a") as f:
            f.write(entry)
    if not identical:
        raise SystemExit(f"results differ: {sail_sums} vs {apache_sums}")


if __name__ == "__main__":
    main()
