"""The data layer's validation, bronze and silver transforms on Sail and on Apache Spark Connect.

Also the feature layer's order features from the silver orders (a windowed aggregation).

Both engines run the same code from `loopwise.pipelines` on the same raw inputs (10 M order rows
and 1 M tickets over ten days, 0.1% malformed) read from Parquet, and write Parquet (Apache
Spark here has no Delta JAR: Maven is unreachable), snappy-compressed as the lake's Delta files are
on both engines (Sail's plain Parquet default is zstd), so they do identical work. A checksum of
every output row proves identical results. Appends the timings and ratios to RESULTS.md.

    python benchmarks/data_layer.py [--orders 10000000] [--tickets 1000000] [--spark-memory 8g]
                                    [--apache-conf KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import platform as stdlib_platform
import shutil
import subprocess
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from loopwise.lake.tables import DateRange
from loopwise.pipelines import stages, transforms
from loopwise.spark import connect, engine_version
from loopwise.validation.suites import validate
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DecimalType
from supportdesk import USE_CASE
from supportdesk.features import customer_order_features, first_order_dates
from supportdesk.feed import generate_day

RESULTS = Path(__file__).with_name("RESULTS.md")
START = date(2026, 3, 2)
DAYS = 10


def raw_table(source: str, rows: int, seed: int = 1) -> pa.Table:
    """`rows` raw rows of a source over ten days, tiled from a real synthetic day, ids made unique."""
    base = pa.Table.from_pandas(generate_day(START, 4000, seed=seed).frames[source], preserve_index=False)
    reps = -(-rows // base.num_rows)
    index = np.arange(rows)
    tiled = pa.concat_tables([base] * reps).slice(0, rows)
    contract = USE_CASE.source(source).contract
    day_of_row = (index * DAYS) // rows
    columns = {name: tiled.column(name).combine_chunks() for name in contract.column_names}
    columns[contract.key] = pc.binary_join_element_wise(columns[contract.key], pa.array((index % (rows // DAYS + 1)).astype(str)), "-")
    rng = np.random.default_rng(seed)
    bad = rng.random(rows) < 0.001
    if source == "orders":
        amounts = np.array(columns["amount"].to_pylist(), dtype=object)
        amounts[bad] = "-5.00"
        columns["amount"] = pa.array(amounts, pa.string())
    else:
        channels = np.array(columns["channel"].to_pylist(), dtype=object)
        channels[bad] = "carrier_pigeon"
        columns["channel"] = pa.array(channels, pa.string())
    landed = pc.binary_join_element_wise(*[pc.fill_null(columns[c], "") for c in contract.column_names], ",")
    line_in_day = index - (day_of_row * rows) // DAYS
    keys = pa.table({"d": day_of_row, "k": columns[contract.key]}).to_pandas()
    occurrence = keys.groupby(["d", "k"]).cumcount().to_numpy() + 1
    return pa.table({
        **columns,
        "_line": pa.array(line_in_day + 1, pa.int64()),
        "_landed_row": landed,
        "_field_shortfall": pa.array(np.zeros(rows, dtype=np.int32)),
        "_extra_columns": pa.nulls(rows, pa.string()),
        "_key_occurrence": pa.array(occurrence.astype(np.int32)),
        "partition_date": pa.array([START + timedelta(days=int(d)) for d in range(DAYS)], pa.date32()).take(pa.array(day_of_row)),
        "_source_file": pa.array(["bench.csv"] * rows),
    })


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
    """The issue's reference workload: a daily per-customer aggregation of the raw order rows."""
    return (orders.groupBy("partition_date", "customer_id")
            .agg(F.count(F.lit(1)).alias("orders"), F.sum(F.col("amount").cast("decimal(12,2)")).alias("amount")))


def save(df: DataFrame, path: str) -> None:
    """Overwrite `path` with `df` as snappy Parquet, the codec of the lake's Delta files on both engines."""
    df.write.mode("overwrite").option("compression", "snappy").parquet(path)


def run(spark: SparkSession, inputs: dict[str, Path], out: Path) -> tuple[dict[str, float], dict[str, tuple[int, int]]]:
    timings: dict[str, float] = {"validate": 0.0, "transforms": 0.0}
    sums: dict[str, tuple[int, int]] = {}
    for source, path in inputs.items():
        contract = USE_CASE.source(source).contract
        raw = spark.read.parquet(str(path))
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
    window = DateRange(START, START + timedelta(days=DAYS - 1))
    extra = {  # timed apart from the total
        "daily_totals": ("daily per-customer totals of the raw orders",
                         daily_customer_totals(spark.read.parquet(str(inputs["orders"])))),
        "features": ("order features (7/30/90-day windows, every day)",
                     customer_order_features(silver, first_order_dates(silver), window)),
    }
    for name, (label, df) in extra.items():
        t = time.perf_counter()
        save(df, str(out / name))
        timings[name] = time.perf_counter() - t
        sums[name] = checksum(spark.read.parquet(str(out / name)))
        print(f"  {label}: {timings[name]:.1f} s")
    return timings, sums


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {stdlib_platform.system()} {stdlib_platform.release()}"


def commit() -> str:
    """The commit measured; `+dirty` when the working tree has uncommitted changes."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
    return head + ("+dirty" if dirty.strip() else "")


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
    parser.add_argument("--apache-conf", action="append", default=[], metavar="KEY=VALUE", type=key_value,
                        help="more Apache Spark configuration, e.g. spark.sql.shuffle.partitions=200 (Spark's "
                             "default; Loopwise's local[N] sets 4)")
    args = parser.parse_args()
    import great_expectations  # noqa: F401 - its ~3 s import is not the engines' work
    apache_conf = {"spark.driver.memory": args.spark_memory, **dict(c.split("=", 1) for c in args.apache_conf)}
    apache_label = ", ".join([f"driver memory {args.spark_memory}", *args.apache_conf])

    work = Path(tempfile.mkdtemp(prefix="loopwise-bench-"))
    try:
        t = time.perf_counter()
        inputs = {}
        for source, rows in (("orders", args.orders), ("tickets", args.tickets)):
            inputs[source] = work / f"raw_{source}.parquet"
            pq.write_table(raw_table(source, rows), inputs[source], row_group_size=1_000_000)
        print(f"inputs: {args.orders:,} orders, {args.tickets:,} tickets ({time.perf_counter() - t:.1f} s to generate)")

        print("Sail (embedded):")
        t = time.perf_counter()
        sail = connect(None)
        sail.range(1).collect()
        sail_start = time.perf_counter() - t
        sail_t, sail_sums = run(sail, inputs, work / "sail")
        print(f"  validate {sail_t['validate']:.1f} s, transforms {sail_t['transforms']:.1f} s")
        print(f"Apache Spark Connect local[2], {apache_label}:")
        t = time.perf_counter()
        apache = connect("local[2]", apache_conf)
        apache.range(1).collect()
        apache_start = time.perf_counter() - t
        sail_version, apache_version = engine_version(sail), engine_version(apache)
        if sail_version == apache_version:
            raise SystemExit(f"both sessions reached the same engine ({sail_version}): nothing would be compared")
        apache_t, apache_sums = run(apache, inputs, work / "apache")
        print(f"  validate {apache_t['validate']:.1f} s, transforms {apache_t['transforms']:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    identical = sail_sums == apache_sums
    ratio_transforms = apache_t["transforms"] / sail_t["transforms"]
    sail_total, apache_total = (t["validate"] + t["transforms"] for t in (sail_t, apache_t))
    print(f"identical results: {identical}")
    print(f"transforms (bronze + quarantine + silver): Sail {sail_t['transforms']:.1f} s, "
          f"Apache Spark {apache_t['transforms']:.1f} s, ratio {ratio_transforms:.1f}x")
    print(f"with GX validation: Sail {sail_total:.1f} s, Apache Spark {apache_total:.1f} s, "
          f"ratio {apache_total / sail_total:.1f}x")
    with RESULTS.open("a") as f:
        f.write(
            f"\n## data_layer.py — {datetime.now():%Y-%m-%d %H:%M} — commit {commit()}\n"
            f"Machine: {machine()}. Inputs: {args.orders:,} order rows, {args.tickets:,} tickets, 10 days, 0.1% malformed.\n\n"
            f"| step | Sail (embedded) | Apache Spark Connect local[2], {apache_label} | ratio |\n"
            "|---|---|---|---|\n"
            f"| bronze + quarantine + silver transforms | {sail_t['transforms']:.1f} s | {apache_t['transforms']:.1f} s "
            f"| {ratio_transforms:.1f}x |\n"
            f"| GX validation (row-level) | {sail_t['validate']:.1f} s | {apache_t['validate']:.1f} s "
            f"| {apache_t['validate'] / sail_t['validate']:.1f}x |\n"
            f"| total | {sail_total:.1f} s | {apache_total:.1f} s | {apache_total / sail_total:.1f}x |\n"
            f"| engine start (not in the total) | {sail_start:.1f} s | {apache_start:.1f} s "
            f"| {apache_start / sail_start:.1f}x |\n"
            f"| total with engine start: what one run in a fresh process pays | {sail_total + sail_start:.1f} s "
            f"| {apache_total + apache_start:.1f} s | {(apache_total + apache_start) / (sail_total + sail_start):.1f}x |\n"
            f"| order features from silver (not in the total) | {sail_t['features']:.1f} s | {apache_t['features']:.1f} s "
            f"| {apache_t['features'] / sail_t['features']:.1f}x |\n"
            f"| daily per-customer totals of the raw orders (not in the total) | {sail_t['daily_totals']:.1f} s "
            f"| {apache_t['daily_totals']:.1f} s | {apache_t['daily_totals'] / sail_t['daily_totals']:.1f}x |\n\n"
            f"Engines: {sail_version} and Apache Spark {apache_version}. "
            f"Identical results (row count and xxhash64 sum of every output row, per table): {identical}.\n"
        )
    if not identical:
        raise SystemExit(f"results differ: {sail_sums} vs {apache_sums}")


if __name__ == "__main__":
    main()
