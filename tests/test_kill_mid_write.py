"""A materialization killed mid-write leaves the table at its last committed version."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from loopwise.config import Settings
from loopwise.lake.tables import DateRange, Lake, overwrite_partitions_arrow
from loopwise.pipelines import stages
from supportdesk import USE_CASE

from tests.conftest import DAY1
from tests.services import child_env

ROOT = Path(__file__).resolve().parent.parent


def bronze_orders(n: int) -> pa.Table:
    i = np.arange(n)
    return pa.table({
        "order_id": pa.array(np.char.add("O", i.astype(str))),
        "customer_id": pa.array(np.char.add("C", (i % 5000).astype(str))),
        "ordered_at": pa.array(np.datetime64("2026-03-02T00:00:00", "us") + i.astype("timedelta64[ms]"),
                               pa.timestamp("us", tz="UTC")),
        "amount": pa.array(np.round(1 + (i % 9973) / 100.0, 2)).cast(pa.decimal128(12, 2)),
        "currency": pa.array(np.where(i % 2 == 0, "EUR", "USD")),
        "status": pa.array(np.where(i % 7 == 0, "refunded", "completed")),
        "partition_date": pa.array([DAY1] * n, pa.date32()),
        "_line": pa.array(i + 1),
    })


def committed_files(table_dir: Path) -> set[str]:
    files: set[str] = set()
    for log in (table_dir / "_delta_log").glob("*.json"):
        for line in log.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                files.add(action["add"]["path"])
    return files


def test_sigkill_mid_write_keeps_the_last_committed_version(settings: Settings, lake: Lake, spark) -> None:
    window = DateRange.of(DAY1)
    overwrite_partitions_arrow(bronze_orders(1000), stages.bronze_table(lake, "orders"), window)
    stages.build_silver(spark, lake, USE_CASE.source("orders"), window)
    silver = stages.silver_table(lake, "orders")
    assert (silver.current_version(), silver.count()) == (0, 1000)

    overwrite_partitions_arrow(bronze_orders(3_000_000), stages.bronze_table(lake, "orders"), window)
    env = child_env(DAGSTER_HOME=str(settings.paths.dagster_home))
    settings.paths.dagster_home.mkdir(parents=True)
    cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "definitions",
           "--select", "silver_orders", "--partition", DAY1.isoformat()]
    log = (settings.paths.dagster_home / "killed-run.log").open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    table_dir = Path(silver.uri)
    before = committed_files(table_dir)
    killed_after: set[str] = set()
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        written = {str(p.relative_to(table_dir)) for p in table_dir.rglob("*.parquet")}
        if written - before:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and the embedded engine in it
            killed_after = written - before
            break
        time.sleep(0.002)
    if proc.poll() is None and not killed_after:
        os.killpg(proc.pid, signal.SIGKILL)  # timed out: stop it before reporting
    proc.wait(timeout=30)
    log.close()
    output = Path(log.name).read_text()[-3000:]
    assert killed_after, f"the materialization finished or timed out before it wrote a data file:\n{output}"
    assert proc.returncode == -signal.SIGKILL

    # Data files of the killed write lie on disk, but no commit references them.
    assert committed_files(table_dir) == before
    assert silver.current_version() == 0
    assert silver.count() == 1000
    assert spark.read.format("delta").load(silver.uri).count() == 1000

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert silver.current_version() == 1
    assert silver.count() == 3_000_000
