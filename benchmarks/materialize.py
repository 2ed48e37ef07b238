"""Online materialization: `feast materialize` against Loopwise's push, same rows, same store.

1 M offline rows (100 k customers x 10 daily timestamps) of the customer_orders view in a Delta
table. The peer is stock Feast (its file offline store and its online write); Loopwise reads the
same table and pushes the newest row per customer. Both write into the same kind of store
(SQLite, then a Redis server on loopback); values read back through Feast's SDK must be identical.

    python benchmarks/materialize.py [--customers 100000] [--days 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import commit, machine
from loopwise.features import online
from loopwise.features.store import FeastLocation, apply_repo, feature_store
from loopwise.lake.tables import DateRange, Lake, overwrite_partitions_arrow

REPO = Path(__file__).resolve().parent.parent / "feature_repo"
RESULTS = Path(__file__).with_name("RESULTS.md")
START = date(2026, 3, 1)
UTC = UTC


def offline_rows(customers: int, days: int) -> pa.Table:
    rng = np.random.default_rng(3)
    n = customers * days
    day = np.repeat(np.arange(days), customers)
    ids = np.tile(np.array([f"C{i:06d}" for i in range(customers)]), days)
    ints = lambda hi: pa.array(rng.integers(0, hi, n), pa.int64())
    floats = lambda hi: pa.array(np.round(rng.uniform(0, hi, n), 2))
    return pa.table({
        "customer_id": ids, "orders_7d": ints(10), "orders_30d": ints(30), "orders_90d": ints(90),
        "amount_eur_sum_30d": floats(3000), "amount_eur_sum_90d": floats(9000), "amount_eur_mean_90d": floats(300),
        "refund_rate_90d": floats(1), "cancel_rate_90d": floats(1), "days_since_last_order": ints(90),
        "tenure_days": ints(1000),
        "event_timestamp": pa.array([datetime(2026, 3, 2, tzinfo=UTC) + timedelta(days=int(d)) for d in range(days)],
                                    pa.timestamp("us", tz="UTC")).take(pa.array(day)),
        "partition_date": pa.array([START + timedelta(days=int(d)) for d in range(days)], pa.date32()).take(pa.array(day)),
    })


def read_back(store, ids: list[str]) -> dict:  # type: ignore[no-untyped-def]
    return store.get_online_features(features=[f"customer_orders:{f}" for f in
                                               ("orders_7d", "amount_eur_sum_90d", "refund_rate_90d", "tenure_days")],
                                     entity_rows=[{"customer_id": c} for c in ids]).to_dict()


def stock_feast(location: FeastLocation):  # type: ignore[no-untyped-def]
    """Feast as its users run it: the file (Dask) offline store."""
    from feast import FeatureStore
    from feast.infra.offline_stores.dask import DaskOfflineStoreConfig
    from loopwise.features.store import repo_config

    # A freshly written table has no removed files: Feast's own store reads it correctly.
    return FeatureStore(config=repo_config(location, DaskOfflineStoreConfig()))


def run(kind: str, work: Path, lake: Lake, rows: pa.Table, days: int, redis_url: str | None) -> tuple[float, float, bool]:
    extra = {"online_store": "redis", "redis_url": redis_url} if kind == "redis" else {}
    peer_loc = FeastLocation(REPO, work / f"{kind}-feast", **extra)
    ours_loc = FeastLocation(REPO, work / f"{kind}-loopwise", **extra)
    peer, ours = stock_feast(peer_loc), feature_store(ours_loc)
    apply_repo(peer, REPO)
    apply_repo(ours, REPO)
    if kind == "redis":
        import redis

        host, port = redis_url.split(":")  # type: ignore[union-attr]
        client = redis.Redis(host=host, port=int(port))
        client.flushall()
    t = time.perf_counter()
    peer.materialize(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2 + days, tzinfo=UTC), ["customer_orders"])
    feast_s = time.perf_counter() - t
    sample = [f"C{i:06d}" for i in range(0, rows.num_rows // days, 997)]
    peer_values = read_back(peer, sample)
    if kind == "redis":
        client.flushall()
    t = time.perf_counter()
    from deltalake import DeltaTable

    table = DeltaTable(lake.table("features_customer_orders").uri).to_pyarrow_table()
    online.push(ours, "customer_orders", table)
    ours_s = time.perf_counter() - t
    return feast_s, ours_s, read_back(ours, sample) == peer_values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loopwise-mat-"))
    os.environ["LOOPWISE__LAKE__URI"] = str(work / "lake")  # the feature repository reads its sources from here
    lake = Lake(str(work / "lake"))
    rows = offline_rows(args.customers, args.days)
    overwrite_partitions_arrow(rows, lake.table("features_customer_orders"),
                               DateRange(START, START + timedelta(days=args.days - 1)))
    print(f"offline rows: {rows.num_rows:,} ({args.customers:,} customers x {args.days} timestamps)")
    results = {}
    redis_proc = None
    try:
        results["sqlite"] = run("sqlite", work, lake, rows, args.days, None)
        redis_bin = shutil.which("redis-server")
        if redis_bin:
            port = 6390
            redis_proc = subprocess.Popen([redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                           "--appendonly", "no"], stdout=subprocess.DEVNULL)
            time.sleep(0.5)
            results["redis"] = run("redis", work, lake, rows, args.days, f"127.0.0.1:{port}")
        else:
            print("redis-server not installed: the Redis comparison is skipped")
    finally:
        if redis_proc:
            redis_proc.terminate()
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"\n## materialize.py — {datetime.now():%Y-%m-%d %H:%M} — commit {commit()}",
             f"Machine: {machine()}. {rows.num_rows:,} offline rows ({args.customers:,} customers x {args.days} "
             "timestamps), view customer_orders (10 features).\n",
             "| online store | feast materialize | Loopwise push | ratio | values read back through Feast identical |",
             "|---|---|---|---|---|"]
    for kind, (feast_s, ours_s, same) in results.items():
        print(f"{kind}: feast materialize {feast_s:.1f} s, Loopwise push {ours_s:.1f} s, "
              f"ratio {feast_s / ours_s:.1f}x, identical: {same}")
        lines.append(f"| {kind} | {feast_s:.1f} s | {ours_s:.1f} s | {feast_s / ours_s:.1f}x | {same} |")
    with RESULTS.open("a") as f:
        f.write("\n".join(lines) + "\n")
    if not all(r[2] for r in results.values()):
        raise SystemExit("values differ between feast materialize and the Loopwise push")


if __name__ == "__main__":
    main()
