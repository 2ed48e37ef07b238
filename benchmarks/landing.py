"""Landing CSV reader: the line-by-line reader it replaced against the RFC 4180 one, same file.

An orders-like day file (id, customer id, timestamp, amount, currency, status, and a free-text
note: quoted commas, quotes and line breaks in a small share of rows, 0.1% truncated lines, a few
repeated ids) is written to a temp folder. Each reader runs in a fresh subprocess: its time to a
pyarrow table, and its peak RSS (ru_maxrss of that child, from wait4). The old reader holds some
20x its file in memory, so by default it reads a 1 M-row file from the same generator and the new
reader reads both that file and the full-size one. Goals: 10 M rows in at most 10 s, peak RSS at
most 3x the file.

A child's ru_maxrss also counts its parent's memory when it was forked, so this process imports
nothing heavy and leaves writing the files to a subprocess too: numpy and pyarrow are imported
where they are used.

    python benchmarks/landing.py [--rows 10000000] [--old-rows 1000000]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from common import RESULTS, commit, load_average, machine

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    from loopwise.contracts import SourceContract

COLUMNS = ["order_id", "customer_id", "ordered_at", "amount", "currency", "status", "note"]


def contract() -> SourceContract:
    from loopwise.contracts import Column, SourceContract

    return SourceContract(
        name="orders",
        key="order_id",
        event_time="ordered_at",
        columns=(
            Column("order_id", "id"),
            Column("customer_id", "id"),
            Column("ordered_at", "timestamp"),
            Column("amount", "amount"),
            Column("currency", "enum", allowed=("EUR", "USD", "GBP")),
            Column("status", "enum", allowed=("completed", "refunded", "cancelled")),
            Column("note", "text", required=False),
        ),
    )
# Share of rows per note; the last five are written quoted (commas, quotes, line breaks).
NOTES = {
    "": 0.55, "gift wrap": 0.10, "leave at the door": 0.10, "call before delivery": 0.08, "express": 0.10,
    "Please ring twice, the bell is broken": 0.04, 'size "M" please': 0.01, "one, two, three": 0.01,
    "line one\nline two": 0.007, "first line\r\nsecond, line\nthird \"quoted\"": 0.003,
}
TRUNCATED, REPEATED = 0.001, 0.0001


# --- the file ---------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, values: list[str], shares: list[float], n: int) -> pa.Array:
    import numpy as np
    import pyarrow as pa

    codes = np.searchsorted(np.cumsum(shares) / np.sum(shares), rng.random(n), side="right")
    return pa.array(values, pa.string()).take(pa.array(codes.astype(np.int32)))


def _padded(numbers: np.ndarray, width: int) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.utf8_lpad(pa.array(numbers).cast(pa.string()), width, "0")


def write_day_file(path: Path, rows: int, seed: int = 7) -> int:
    """Write the day file; return its number of records (every row one record, the broken ones too)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(seed)
    ids = np.arange(rows) + 1_000_000
    repeated = rng.choice(rows, int(rows * REPEATED), replace=False)
    ids[repeated] = ids[rng.integers(0, rows, len(repeated))]
    seconds = np.sort(rng.integers(0, 86_400, rows))
    clock = pc.binary_join_element_wise(_padded(seconds // 3600, 2), _padded(seconds // 60 % 60, 2),
                                        _padded(seconds % 60, 2), ":")
    cents = rng.gamma(2.0, 3000.0, rows).astype(np.int64) + 1
    note = _pick(rng, list(NOTES), list(NOTES.values()), rows)
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(note, '"', '""'), '"', "")
    line = pc.binary_join_element_wise(
        pc.binary_join_element_wise("O", _padded(ids, 10), ""),
        pc.binary_join_element_wise("C", _padded(rng.integers(0, 200_000, rows), 6), ""),
        pc.binary_join_element_wise("2026-03-02", clock, " "),
        pc.binary_join_element_wise(pa.array(cents // 100).cast(pa.string()), _padded(cents % 100, 2), "."),
        _pick(rng, ["EUR", "USD", "GBP"], [0.6, 0.3, 0.1], rows),
        _pick(rng, ["completed", "refunded", "cancelled"], [0.85, 0.1, 0.05], rows),
        pc.if_else(pc.match_substring_regex(note, '[",\r\n]'), quoted, note),
        ",",
    )
    # Truncated lines: cut inside the timestamp, on rows whose note needs no quotes.
    cut = np.zeros(rows, bool)
    cut[rng.choice(rows, int(rows * TRUNCATED), replace=False)] = True
    cut &= ~pc.match_substring(line, '"').to_numpy(zero_copy_only=False)
    line = pc.if_else(pa.array(cut), pc.utf8_slice_codeunits(line, 0, 30), line)
    line = pc.binary_join_element_wise(line, "\n", "")
    offsets = np.frombuffer(line.buffers()[1], np.int32)[line.offset:line.offset + len(line) + 1]
    with path.open("wb") as f:
        f.write(",".join(COLUMNS).encode() + b"\n")
        f.write(memoryview(line.buffers()[2])[offsets[0]:offsets[-1]])
    return rows


# --- the reader it replaced, as it was (platform/loopwise/landing/zone.py before reader.py) ----


@dataclass
class OldLandedTable:
    """The reader's result as it was."""

    table: pa.Table
    missing_columns: list[str]
    extra_columns: list[str]


def old_reader(path: Path, contract: SourceContract) -> OldLandedTable:
    """Read a landing file as landed: every value a string, nothing dropped.

    One physical line is one record, so a truncated or badly quoted line damages only itself.
    Bytes that are not UTF-8 are decoded with replacement characters, which validation flags.
    Columns outside the contract are kept as JSON in `_extra_columns` and reported.
    """
    import pyarrow as pa

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # imported here, not at the top: the CSV runs do without it

        source = pq.read_table(path)
        header = source.column_names
        rows = [[None if v is None else str(v) for v in row.values()] for row in source.to_pylist()]
        landed = [json.dumps(dict(zip(header, r, strict=False)), ensure_ascii=False) for r in rows]
        counts = [len(header)] * len(rows)
    else:
        lines = path.read_bytes().split(b"\n")
        header = next(csv.reader([lines[0].decode("utf-8", errors="replace").rstrip("\r")]))
        rows, landed, counts = [], [], []
        for raw in lines[1:]:
            if not raw.strip():
                continue
            text = raw.decode("utf-8", errors="replace").rstrip("\r")
            fields = next(csv.reader([text]), [])
            landed.append(text)
            counts.append(len(fields))
            rows.append([f if f != "" else None for f in fields])
    index = {name: i for i, name in enumerate(header)}
    columns: dict[str, list[str | None]] = {}
    for name in contract.column_names:
        i = index.get(name)
        columns[name] = [r[i] if i is not None and i < len(r) else None for r in rows]
    extra = [h for h in header if h not in contract.column_names]
    extras = [json.dumps({h: r[index[h]] for h in extra if index[h] < len(r)}, ensure_ascii=False) if extra else None
              for r in rows]
    seen: dict[str, int] = {}
    occurrence: list[int | None] = []
    for key in columns[contract.key]:
        if key is None:
            occurrence.append(None)
        else:
            seen[key] = seen.get(key, 0) + 1
            occurrence.append(seen[key])
    table = pa.table({
        **{k: pa.array(v, pa.string()) for k, v in columns.items()},
        "_line": pa.array(range(1, len(rows) + 1), pa.int64()),
        "_landed_row": pa.array(landed, pa.string()),
        # Fields the record lacks against its own header: a truncated line has a shortfall.
        "_field_shortfall": pa.array([len(header) - c for c in counts], pa.int32()),
        "_extra_columns": pa.array(extras, pa.string()),
        # The how-many-th time this id appears in the file, in line order: later duplicates fail.
        "_key_occurrence": pa.array(occurrence, pa.int32()),
    })
    return OldLandedTable(table, [c for c in contract.column_names if c not in index], extra)


# --- runs ---------------------------------------------------------------------------------------


@dataclass
class Run:
    reader: str
    file_rows: int
    file_bytes: int
    seconds: float
    table_rows: int
    malformed: int  # rows with a field shortfall
    cpu_seconds: float  # user + system, the whole child process
    peak_rss: int  # bytes

    @property
    def rss_ratio(self) -> float:
        return self.peak_rss / self.file_bytes


def child(reader: str, path: Path) -> None:
    """Read the file once in this fresh process and print what it took as JSON."""
    import numpy as np

    if reader == "new":
        from loopwise.landing.reader import read_landing_file
    else:
        read_landing_file = old_reader
    source = contract()
    t = time.perf_counter()
    table = read_landing_file(path, source).table
    seconds = time.perf_counter() - t
    # numpy, not pc.equal(column, 0): a Python scalar would make pyarrow import pandas after the read.
    malformed = sum(int(np.count_nonzero(c.to_numpy())) for c in table.column("_field_shortfall").chunks)
    # The peak of this process's own memory, whatever its parent held when it was forked.
    hwm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": seconds, "rows": table.num_rows, "malformed": malformed, "vm_hwm": hwm}))


def measure(reader: str, path: Path, file_rows: int) -> Run:
    """Run one reader in a fresh subprocess; its peak RSS comes from the kernel's account of it."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", reader, str(path)], stdout=subprocess.PIPE,
                            text=True)
    out = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"the {reader} reader failed on {path} (exit {proc.returncode})")
    got = json.loads(out.strip().splitlines()[-1])
    run = Run(reader, file_rows, path.stat().st_size, got["seconds"], got["rows"], got["malformed"],
              usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)  # ru_maxrss is in KiB on Linux
    if abs(got["vm_hwm"] - run.peak_rss) > 0.05 * run.peak_rss:
        print(f"  (the child's own VmHWM, {got['vm_hwm'] / 1e9:.2f} GB, differs from its ru_maxrss)")
    print(f"  {reader}: {run.file_rows:,} rows, {run.file_bytes / 1e6:.0f} MB: {run.seconds:.1f} s "
          f"(process CPU {run.cpu_seconds:.1f} s), "
          f"{run.table_rows:,} table rows ({run.malformed:,} with a field shortfall), "
          f"peak RSS {run.peak_rss / 1e9:.2f} GB = {run.rss_ratio:.2f}x the file")
    return run


def row(run: Run, label: str) -> str:
    return (f"| {label} | {run.file_rows:,} | {run.file_bytes / 1e6:.0f} MB | {run.seconds:.1f} s | {run.cpu_seconds:.1f} s "
            f"| {run.table_rows:,} | {run.peak_rss / 1e9:.2f} GB | {run.rss_ratio:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the day file the new reader reads")
    parser.add_argument("--old-rows", type=int, default=1_000_000,
                        help="rows of the file both readers read (the old one needs ~20x its file in memory)")
    parser.add_argument("--child", nargs=2, metavar=("READER", "FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--write", nargs=2, metavar=("FILE", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    if args.write:
        write_day_file(Path(args.write[0]), int(args.write[1]))
        return

    load = load_average()
    work = Path(tempfile.mkdtemp(prefix="loopwise-landing-bench-"))
    try:
        t = time.perf_counter()
        big, small = work / "big.csv", work / "small.csv"
        subprocess.run([sys.executable, __file__, "--write", str(big), str(args.rows)], check=True)
        if args.old_rows != args.rows:
            subprocess.run([sys.executable, __file__, "--write", str(small), str(args.old_rows)], check=True)
        else:
            small = big
        print(f"files written in {time.perf_counter() - t:.1f} s")
        new_big = measure("new", big, args.rows)
        old_small = measure("old", small, args.old_rows)
        new_small = measure("new", small, args.old_rows) if small != big else new_big
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if new_big.table_rows != args.rows or new_small.table_rows != args.old_rows:
        raise SystemExit("the new reader did not return one row per record")
    speedup, leaner = old_small.seconds / new_small.seconds, old_small.peak_rss / new_small.peak_rss
    print(f"same {args.old_rows:,}-row file: {speedup:.1f}x faster, {leaner:.1f}x less peak memory")
    goal_time, goal_memory = new_big.seconds <= 10.0, new_big.rss_ratio <= 3.0
    with RESULTS.open("a") as f:
        f.write(
            f"\n## landing.py — {datetime.now():%Y-%m-%d %H:%M} — commit {commit()}\n"
            f"Machine: {machine()}. Inputs: an orders-like CSV day file (7 columns, "
            f"{sum(list(NOTES.values())[-5:]):.1%} of notes quoted with commas, quotes or line breaks, "
            f"{TRUNCATED:.1%} truncated lines, {REPEATED:.2%} repeated ids); the old reader on "
            f"{args.old_rows:,} rows from the same generator.\n\n"
            f"Load average when it started: {load}.\n\n"
            "| reader | rows in file | file | time to table | process CPU (user + system) | table rows | peak RSS "
            "| RSS / file |\n"
            "|---|---|---|---|---|---|---|---|\n"
            f"{row(old_small, 'old: a line at a time (csv module)')}\n"
            f"{row(new_small, 'new: RFC 4180, numpy + pyarrow')}\n"
            + (f"{row(new_big, 'new: RFC 4180, numpy + pyarrow')}\n" if new_big is not new_small else "")
            + f"\nSame {args.old_rows:,}-row file: new is {speedup:.1f}x faster with {leaner:.1f}x less peak memory "
            f"(the old reader's extra rows are the fragments of values with line breaks). Goals at "
            f"{args.rows:,} rows: time <= 10 s {'met' if goal_time else 'NOT met'} ({new_big.seconds:.1f} s), "
            f"peak RSS <= 3x the file {'met' if goal_memory else 'NOT met'} ({new_big.rss_ratio:.2f}x).\n"
        )


if __name__ == "__main__":
    main()
