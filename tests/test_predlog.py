"""The prediction log: every acknowledged record reaches Delta exactly once, across kills, stops and races.

Writers run as real processes (the program below) so that SIGKILL lands wherever it lands: mid-write,
mid-fsync, mid-flush. A writer records each request id in `<tag>.submitted` before `append` and in
`<tag>.acked` only after `append` returned; both with unbuffered `os.write`, so what a kill leaves in
them is exactly what the process had done.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from loopwise.lake.tables import TableRef
from loopwise.serving import predlog
from loopwise.serving.predlog import Prediction, PredictionLog

from tests.services import child_env

ROOT = Path(__file__).resolve().parent.parent

WRITER = r"""
import json, os, signal, sys, threading
from datetime import UTC, datetime
from pathlib import Path
from loopwise.lake.tables import TableRef
from loopwise.serving.predlog import Prediction, PredictionLog

directory, table_uri, tag = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
threads, per_thread, segment_bytes, flush_s = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
log = PredictionLog(directory, TableRef("predictions", table_uri), segment_bytes=segment_bytes)
if flush_s > 0:
    log.start_flusher(flush_s)  # recovers what an earlier writer left, then flushes while appending
flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
submitted = os.open(directory.parent / f"{tag}.submitted", flags)
acked = os.open(directory.parent / f"{tag}.acked", flags)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())

def work(t):
    i = 0
    while not stop.is_set() and (per_thread == 0 or i < per_thread):
        rid = f"{tag}-{t}-{i}"
        os.write(submitted, (rid + "\n").encode())
        log.append([Prediction(rid, datetime.now(UTC), "m", "3", "challenger" if i % 5 == 0 else "champion",
                               json.dumps({"f": i}), json.dumps({"text": "é" * (i % 7)}), i / 1000)])
        os.write(acked, (rid + "\n").encode())
        i += 1

workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
for w in workers:
    while w.is_alive():
        w.join(0.05)  # the main thread stays free to run the SIGTERM handler
print("moved", log.close(), flush=True)
"""

RECOVER = r"""
import sys
from pathlib import Path
from loopwise.lake.tables import TableRef
from loopwise.serving.predlog import PredictionLog
print("moved", PredictionLog(Path(sys.argv[1]), TableRef("predictions", sys.argv[2])).recover(), flush=True)
"""

DIE_AFTER_APPEND = r"""
import json, os, sys
from datetime import UTC, datetime
from pathlib import Path
from loopwise.lake.tables import TableRef
from loopwise.serving.predlog import Prediction, PredictionLog
log = PredictionLog(Path(sys.argv[1]), TableRef("predictions", sys.argv[2]))
for i in range(int(sys.argv[4])):
    log.append([Prediction(f"{sys.argv[3]}-{i}", datetime.now(UTC), "m", "1", "champion", "{}", "{}", 0.5)])
os._exit(0)  # dies without close(): its segment is sealed only because the lock died with it
"""

KILLED_FLUSHER = r"""
import os, signal, sys
from pathlib import Path
from loopwise.lake.tables import TableRef
from loopwise.serving.predlog import PredictionLog
log = PredictionLog(Path(sys.argv[1]), TableRef("predictions", sys.argv[2]))
log._between_commit_and_delete = lambda: os.kill(os.getpid(), signal.SIGKILL)
log.flush()
"""


def start(program: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", program, *map(str, args)], cwd=ROOT, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(program: str, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", program, *map(str, args)], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=120)


def lines(folder: Path, suffix: str) -> list[str]:
    return [line for f in sorted(folder.glob(f"*.{suffix}")) for line in f.read_text().splitlines()]


def wait_for_acks(folder: Path, tag: str, proc: subprocess.Popen[str], at_least: int = 1) -> None:
    deadline = time.monotonic() + 60
    acked = folder / f"{tag}.acked"
    while time.monotonic() < deadline and proc.poll() is None:
        if acked.exists() and acked.read_text().count("\n") >= at_least:
            return
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"writer {tag} acknowledged nothing: {proc.communicate()[0][-3000:]}")


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))


def logged_ids(table: TableRef) -> list[str]:
    return table.read().column("request_id").to_pylist() if table.exists() else []


@pytest.fixture
def where(tmp_path: Path) -> tuple[Path, TableRef]:
    return tmp_path / "wal", TableRef("predictions", str(tmp_path / "lake" / "predictions"))


def record(rid: str, score: float = 0.5) -> Prediction:
    return Prediction(rid, datetime.now(UTC), "m", "1", "champion", json.dumps({"f": 1}), json.dumps({"q": rid}), score)


def test_sigkill_under_load_loses_no_acknowledged_record_and_logs_none_twice(where) -> None:
    directory, table = where
    rng = random.Random(20261124)
    threads, rounds = 8, 5
    for n in range(rounds):
        # small segments and a fast flusher: the kill can land mid-write, mid-fsync, mid-rotation or mid-flush
        proc = start(WRITER, directory, table.uri, f"k{n}", threads, 0, 4096, 0.03)
        wait_for_acks(directory.parent, f"k{n}", proc)
        time.sleep(rng.uniform(0.05, 0.8))
        proc.send_signal(signal.SIGKILL)
        output = proc.communicate(timeout=30)[0]
        assert proc.returncode == -signal.SIGKILL, output[-3000:]
    restarted = run(RECOVER, directory, table.uri)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr

    ids = logged_ids(table)
    acked, submitted = set(lines(directory.parent, "acked")), set(lines(directory.parent, "submitted"))
    assert len(acked) > 1000, "the writers were not under load when killed"
    assert len(ids) == len(set(ids)), "a record reached Delta twice"
    assert acked <= set(ids), f"acknowledged but lost: {sorted(acked - set(ids))[:10]}"
    assert set(ids) <= submitted
    # Durable but not acknowledged: fsync'ed (or written) when the kill came, before the id reached the ack
    # file. At most one in-flight record per thread per kill; the service never answered those requests.
    assert len(set(ids) - acked) <= threads * rounds
    assert not segments(directory)


def test_graceful_stop_and_restart_log_exactly_the_acknowledged_records(where) -> None:
    directory, table = where
    rng = random.Random(3)
    for n in range(2):
        proc = start(WRITER, directory, table.uri, f"g{n}", 8, 0, 16384, 0.05)
        wait_for_acks(directory.parent, f"g{n}", proc, at_least=200)
        time.sleep(rng.uniform(0.05, 0.5))
        proc.send_signal(signal.SIGTERM)  # the writer stops its threads and calls close()
        output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, output[-3000:]
        assert not segments(directory), "close() left a segment behind"
        ids = logged_ids(table)
        assert sorted(ids) == sorted(lines(directory.parent, "acked")) == sorted(lines(directory.parent, "submitted"))

    version = table.current_version()
    restarted = run(RECOVER, directory, table.uri)
    assert restarted.stdout.split() == ["moved", "0"], restarted.stdout + restarted.stderr
    assert table.current_version() == version
    rows = table.read()
    assert rows.schema.names == ["request_id", "at", "model", "version", "arm", "features", "inputs", "score",
                                 "latency_ms", "status", "served", "partition_date"]
    assert table.delta().metadata().partition_columns == ["partition_date"]
    row = rows.slice(0, 1).to_pylist()[0]
    assert row["partition_date"] == row["at"].astimezone(UTC).date()
    assert json.loads(row["inputs"])["text"] in {"é" * k for k in range(7)}


def test_a_flusher_killed_between_its_commit_and_the_delete_moves_nothing_twice(where) -> None:
    directory, table = where
    assert run(DIE_AFTER_APPEND, directory, table.uri, "a", 100).returncode == 0
    killed = run(KILLED_FLUSHER, directory, table.uri)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert len(logged_ids(table)) == 100 and len(segments(directory)) == 1  # committed, not yet deleted
    version = table.current_version()

    assert run(DIE_AFTER_APPEND, directory, table.uri, "b", 50).returncode == 0
    assert PredictionLog(directory, table).recover() == 50  # only the new segment: the old one was committed
    ids = logged_ids(table)
    assert sorted(ids) == sorted([f"a-{i}" for i in range(100)] + [f"b-{i}" for i in range(50)])
    assert table.current_version() == version + 1
    assert not segments(directory)


def test_a_flush_that_fails_after_its_commit_is_not_repeated(where) -> None:
    directory, table = where
    log = PredictionLog(directory, table)
    log.append([record(f"r{i}") for i in range(10)])
    log.rotate()  # sealed, not flushed

    def crash() -> None:
        raise OSError("disk gone")

    log._between_commit_and_delete = crash
    with pytest.raises(OSError):
        log.flush()
    log._between_commit_and_delete = None
    assert log.flush() == 0
    assert sorted(logged_ids(table)) == sorted(f"r{i}" for i in range(10))


@pytest.mark.parametrize("tail", [
    pytest.param(lambda line: line[: len(line) // 2], id="cut mid-line"),
    pytest.param(lambda line: line[:9], id="cut after the checksum"),
    pytest.param(lambda line: b"\x00" * 300, id="zeros after a power cut"),
    pytest.param(lambda line: line[:-30] + b"\n", id="a line that lost bytes in the middle"),
])
def test_a_torn_last_line_is_dropped_and_the_rest_kept(where, tail, caplog) -> None:
    directory, table = where
    assert run(DIE_AFTER_APPEND, directory, table.uri, "t", 3).returncode == 0
    [segment] = segments(directory)
    with segment.open("ab") as f:
        f.write(tail(record("torn").line()))

    assert PredictionLog(directory, table).recover() == 3
    assert sorted(logged_ids(table)) == ["t-0", "t-1", "t-2"]
    assert "dropped 1 torn line" in caplog.text
    assert not segments(directory)


def test_two_processes_appending_to_one_directory_land_every_record_once(where) -> None:
    directory, table = where
    # Each also flushes every 20 ms, so the two flushers race for the same sealed segments.
    writers = [start(WRITER, directory, table.uri, f"p{n}", 4, 300, 8192, 0.02) for n in range(2)]
    for proc in writers:
        output = proc.communicate(timeout=120)[0]
        assert proc.returncode == 0, output[-3000:]
    assert PredictionLog(directory, table).recover() == 0
    ids = logged_ids(table)
    assert len(ids) == 2 * 4 * 300 == len(set(ids))
    assert sorted(ids) == sorted(lines(directory.parent, "acked"))
    writer_ids = {name.rsplit("-", 1)[0] for commit in table.history()
                  for name in commit.get("loopwise.predlog.segments", "").split(",") if name}
    assert len(writer_ids) >= 2, "both processes wrote segments of their own"


def count_durable_writes(monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.0) -> list[int]:
    """Count (and optionally slow down) the log's syncs: `pwritev(RWF_DSYNC)` where the kernel has it, else fdatasync."""
    syncs: list[int] = []
    pwritev, fdatasync = os.pwritev, os.fdatasync

    def synced_write(fd: int, buffers, offset: int, flags: int = 0) -> int:  # type: ignore[no-untyped-def]
        if flags & getattr(os, "RWF_DSYNC", 0):
            syncs.append(fd)
            time.sleep(delay_s)
        return pwritev(fd, buffers, offset, flags)

    def synced(fd: int) -> None:
        syncs.append(fd)
        time.sleep(delay_s)
        fdatasync(fd)

    monkeypatch.setattr(os, "pwritev", synced_write)
    monkeypatch.setattr(os, "fdatasync", synced)
    return syncs


@pytest.mark.parametrize("dsync", [True, False], ids=["pwritev RWF_DSYNC", "write then fdatasync"])
def test_concurrent_async_and_thread_appends_share_fsyncs(where, monkeypatch, dsync) -> None:
    directory, table = where
    if not dsync:
        monkeypatch.setattr(predlog, "_DSYNC", False)  # as on a kernel without pwritev2's RWF_DSYNC
    elif not predlog._DSYNC:
        pytest.skip("this kernel has no RWF_DSYNC")
    syncs = count_durable_writes(monkeypatch)
    log = PredictionLog(directory, table, group_commit_ms=5)
    per_caller, callers = 50, 8

    def thread_caller(t: int) -> None:
        for i in range(per_caller):
            log.append([record(f"t{t}-{i}")])

    async def async_callers() -> None:
        async def one(c: int) -> None:
            for i in range(per_caller):
                await log.append_async([record(f"a{c}-{i}")])
        await asyncio.gather(*(one(c) for c in range(callers)))

    threads = [threading.Thread(target=thread_caller, args=(t,)) for t in range(callers)]
    threads.append(threading.Thread(target=asyncio.run, args=(async_callers(),)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    records = 2 * callers * per_caller
    assert log.stats.records == records
    assert len(syncs) == log.stats.groups
    assert len(syncs) <= records / 4, f"{len(syncs)} fsyncs for {records} records: appends were not grouped"
    assert log.close() == records
    assert len(set(logged_ids(table))) == records


def test_append_async_leaves_the_event_loop_running_while_it_waits(where, monkeypatch) -> None:
    directory, table = where
    syncs = count_durable_writes(monkeypatch, delay_s=0.3)
    log = PredictionLog(directory, table)

    async def main() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        await log.append_async([record("slow")])
        ticker.cancel()
        return ticks

    assert asyncio.run(main()) >= 10
    assert len(syncs) == 1
    assert log.close() == 1


def test_the_flusher_moves_a_quiet_process_segment_within_its_interval(where) -> None:
    directory, table = where
    log = PredictionLog(directory, table)
    log.start_flusher(0.05)
    log.append([record(f"q{i}") for i in range(5)])  # far below segment_bytes: only the flusher's rotation seals it
    deadline = time.monotonic() + 30
    while len(logged_ids(table)) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(logged_ids(table)) == [f"q{i}" for i in range(5)]
    log.append([record("after")])  # a fresh segment after the rotation
    # close() moves it unless the flusher, rotating every 50 ms, got there first (seen under load): once, either way.
    assert log.close() in (0, 1)
    assert sorted(logged_ids(table)) == sorted([*(f"q{i}" for i in range(5)), "after"]) and not segments(directory)


def test_a_forked_worker_writes_a_segment_of_its_own(where) -> None:
    directory, table = where
    log = PredictionLog(directory, table)
    log.append([record("parent-0")])
    pid = os.fork()
    if pid == 0:  # the child: the inherited segment must not be written to; no Delta here (tokio does not fork)
        try:
            log.append([record("child-0"), record("child-1")])
            os._exit(0 if log.writer_id.startswith(f"{os.getpid()}-") else 3)
        except BaseException:
            os._exit(4)
    assert os.waitpid(pid, 0)[1] == 0
    log.append([record("parent-1")])
    assert len({p.name.rsplit("-", 1)[0] for p in segments(directory)}) == 2
    assert log.close() == 4
    assert sorted(logged_ids(table)) == ["child-0", "child-1", "parent-0", "parent-1"]


def test_append_refuses_what_could_not_become_a_row_and_a_closed_log(where) -> None:
    directory, table = where
    log = PredictionLog(directory, table)
    with pytest.raises(ValueError, match="has no timezone"):
        log.append([Prediction("n", datetime(2026, 3, 2, 12), "m", "1", "champion", "{}", "{}", 0.1)])
    with pytest.raises(TypeError, match="`features` must be JSON text"):
        log.append([Prediction("d", datetime.now(UTC), "m", "1", "champion", {"f": 1}, "{}", 0.1)])  # type: ignore[arg-type]
    log.append([Prediction("v", datetime.now(UTC), "m", 7, "champion", "{}", "{}", 1)])  # type: ignore[arg-type]
    assert log.flush() == 0  # its segment is live
    assert log.close() == 1
    assert table.read().select(["request_id", "version", "score"]).to_pylist() == [
        {"request_id": "v", "version": "7", "score": 1.0}]
    with pytest.raises(predlog.PredictionLogError, match="closed"):
        log.append([record("late")])


def test_lines_from_before_latency_status_and_served_were_logged_still_move(tmp_path: Path) -> None:
    """A segment an older service left (8 fields a line) lands with status ok, served, and no latency."""
    from loopwise.lake.tables import Lake
    from loopwise.serving.predlog import PredictionLog, read_segment

    directory = tmp_path / "wal"
    directory.mkdir()
    body = json.dumps(["old-1", 1_700_000_000_000_000, "m", "1", "champion", "{}", "{}", 0.25]).encode()
    (directory / "1-1-000001.wal").write_bytes(b"%08x %s\n" % (zlib.crc32(body), body))
    assert read_segment((directory / "1-1-000001.wal").read_bytes()).rows[0][8:] == [None, "ok", True]
    table = Lake(str(tmp_path / "lake")).table("predictions")
    log = PredictionLog(directory=directory, lake_table=table)
    assert log.recover() == 1
    row = table.read().to_pylist()[0]
    assert (row["request_id"], row["latency_ms"], row["status"], row["served"]) == ("old-1", None, "ok", True)
    log.close()
