"""The prediction log: a group-committed write-ahead log on local disk, moved into a Delta table.

A service calls `append` (or `append_async`) before it answers; the call returns once the records
are written and fsync'ed, so every answered prediction survives a kill. One writer thread per log
batches concurrent callers into one write and one fsync. Each log writes its own segment files
(`<pid>-<start ns>-<seq>.wal`), holding an exclusive `flock` on the open one: a segment nobody holds
a lock on is sealed (rotated, closed, or its process died) and a flusher, in any process, moves it
into Delta exactly once: the commit carries a Delta transaction id per writer (`txn` action, app id
= the writer, version = the segment's sequence number), so a flusher killed between its commit and
deleting the segment skips it next time instead of committing it twice.

Line format: `<crc32 of the JSON, 8 hex digits> <JSON>\n`. A line that is cut short or fails its
checksum (a kill or a power cut mid-write) is dropped when the segment is read; no caller was told
such a record was logged, because its fsync never returned.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import re
import threading
import time
import weakref
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from deltalake import CommitProperties, Transaction, write_deltalake

from loopwise.lake.tables import TableRef

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_US_PER_DAY = 86_400_000_000
_SEGMENT = re.compile(r"^(?P<writer>\d+-\d+)-(?P<seq>\d{6,})\.wal$")
_APP_ID = "loopwise.predlog/"  # Delta txn app id prefix; the writer's `<pid>-<start ns>` follows
_FLUSH_BYTES = 256 << 20  # segments read into one Delta commit at most (memory bound of a flush)
_GROUP_HISTORY = 16  # groups over which the writer remembers how many callers came together
_CLOSE_WAIT_S = 30.0  # how long close() waits for another process's flusher to release this log's segment
_GONE = object()  # a segment deleted by another flusher (after its commit)
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # built once: json.dumps(**kw) builds one a call

SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("at", pa.timestamp("us", tz="UTC")),
    ("model", pa.string()),
    ("version", pa.string()),
    ("arm", pa.string()),
    ("features", pa.string()),
    ("inputs", pa.string()),
    ("score", pa.float64()),
    ("latency_ms", pa.float64()),
    ("status", pa.string()),
    ("served", pa.bool_()),
    ("partition_date", pa.date32()),
])
_FIELDS = len(SCHEMA) - 1  # a log line holds every column but the derived partition_date
_OLD_FIELDS = 8  # lines written before latency, status and served were logged
_OLD_DEFAULTS = [None, "ok", True]


class PredictionLogError(RuntimeError):
    """Records could not be made durable: the caller must not treat them as logged."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """One answered prediction: what was asked, which model and arm answered, with what features."""

    request_id: str
    at: datetime  # timezone-aware; stored as UTC
    model: str
    version: str
    arm: str
    features: str  # JSON text of the feature values used
    inputs: str  # JSON text of the request-time inputs
    score: float  # NaN when the model failed (status "error")
    latency_ms: float = 0.0  # from the request's arrival to this arm's score
    status: str = "ok"  # ok, or error: the arm failed to score (the evidence of a rollout's error rate)
    served: bool = True  # False for a shadow arm's score, which the client never saw

    @property
    def partition_date(self) -> date:
        return self.at.astimezone(UTC).date()

    def line(self) -> bytes:
        """The record as one checksummed log line."""
        if self.at.tzinfo is None:
            raise ValueError(f"prediction {self.request_id}: `at` has no timezone ({self.at.isoformat()}); "
                             "pass an aware datetime, e.g. datetime.now(UTC)")
        # Checked here, not at flush: a record that cannot become a row must fail its caller, not block the
        # segment it would sit in.
        if not isinstance(self.features, str) or not isinstance(self.inputs, str):
            name = "features" if not isinstance(self.features, str) else "inputs"
            raise TypeError(f"prediction {self.request_id}: `{name}` must be JSON text, got "
                            f"{type(getattr(self, name)).__name__} (pass json.dumps(...))")
        body = _encode([str(self.request_id), (self.at - _EPOCH) // _US, str(self.model), str(self.version),
                        str(self.arm), self.features, self.inputs, float(self.score), float(self.latency_ms),
                        str(self.status), bool(self.served)]).encode()
        return b"%08x %s\n" % (zlib.crc32(body), body)


@dataclass(frozen=True)
class LogStats:
    """What this log has written since it was opened (in this process)."""

    records: int = 0
    groups: int = 0  # group commits: one write and one fsync each
    bytes: int = 0
    segments: int = 0  # segment files opened


@dataclass(frozen=True)
class SegmentRead:
    """The records of one sealed segment, and what was dropped as torn."""

    rows: list[list]
    dropped_lines: int
    dropped_bytes: int


def read_segment(data: bytes) -> SegmentRead:
    """Parse a segment: keep every line whose checksum holds, drop a cut-short or corrupt one."""
    rows: list[list] = []
    dropped_lines = dropped_bytes = 0
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or a line a kill cut short
    if tail:
        dropped_lines, dropped_bytes = 1, len(tail)
    for line in lines:
        row = _parse(line)
        if row is None:
            dropped_lines += 1
            dropped_bytes += len(line) + 1
        else:
            rows.append(row)
    return SegmentRead(rows, dropped_lines, dropped_bytes)


def _parse(line: bytes) -> list | None:
    if len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        row = json.loads(body)
    except ValueError:
        return None
    if isinstance(row, list) and len(row) == _OLD_FIELDS:
        return [*row, *_OLD_DEFAULTS]
    return row if isinstance(row, list) and len(row) == _FIELDS else None


def to_arrow(rows: list[list]) -> pa.Table:
    """Parsed log rows as a table of `SCHEMA`, `partition_date` the UTC date of `at`."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * _FIELDS
    at_us = pa.array(columns[1], pa.int64())
    days = pa.array([us // _US_PER_DAY for us in columns[1]], pa.int32())
    return pa.Table.from_arrays([
        pa.array(columns[0], pa.string()), at_us.cast(pa.timestamp("us", tz="UTC")),
        pa.array(columns[2], pa.string()), pa.array(columns[3], pa.string()), pa.array(columns[4], pa.string()),
        pa.array(columns[5], pa.string()), pa.array(columns[6], pa.string()), pa.array(columns[7], pa.float64()),
        pa.array(columns[8], pa.float64()), pa.array(columns[9], pa.string()), pa.array(columns[10], pa.bool_()),
        days.cast(pa.date32()),
    ], schema=SCHEMA)


class _Group:
    """Records waiting for the same write and fsync, and the callers waiting on them."""

    __slots__ = ("async_waiters", "callers", "chunks", "done", "error", "first_at", "records")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.records = 0
        self.callers = 0
        self.first_at = 0.0  # time.monotonic() when its first caller came
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.async_waiters: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}

    def finish(self, error: BaseException | None) -> None:
        self.error = error
        self.done.set()
        # One wake-up per event loop, not per caller: the writer thread holds the GIL for as little as it can.
        for loop, futures in self.async_waiters.items():
            try:
                loop.call_soon_threadsafe(_resolve, futures, error)
            except RuntimeError:  # that event loop is closed: nobody is waiting any more
                pass


def _resolve(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():  # the caller was cancelled
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(PredictionLogError(f"prediction log write failed: {error}"))


@dataclass
class _Claimed:
    """A sealed segment this flusher holds the lock on."""

    path: Path
    writer: str
    seq: int
    fd: int
    size: int = field(default=0)


_OPEN_LOGS: weakref.WeakSet[PredictionLog] = weakref.WeakSet()


class PredictionLog:
    """Durable, group-committed prediction records; sealed segments flushed into `lake_table`."""

    # Test hook: called after a flush's Delta commit and before its segments are deleted.
    _between_commit_and_delete: Callable[[], None] | None = None

    def __init__(self, directory: Path, lake_table: TableRef, group_commit_ms: float = 0.0,
                 segment_bytes: int = 64 << 20) -> None:
        self.directory = Path(directory)
        self.table = lake_table
        self.group_commit_s = max(group_commit_ms, 0.0) / 1000.0
        self.segment_bytes = segment_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._flush_lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._flusher_stop = threading.Event()
        self._start_writer_state()
        _OPEN_LOGS.add(self)

    def _start_writer_state(self) -> None:
        self._pid = os.getpid()
        self._writer_id = f"{self._pid}-{time.time_ns()}"
        self._cond = threading.Condition(threading.Lock())
        self._group = _Group()
        self._sizes: deque[int] = deque(maxlen=_GROUP_HISTORY)
        self._target = 1
        self._writer: threading.Thread | None = None
        self._closing = False
        self._io_lock = threading.Lock()  # the writer's write, or a rotation: the open segment's fd changes under it
        self._fd: int | None = None
        self._size = 0
        self._seq = 0
        self._stats = LogStats()

    @property
    def writer_id(self) -> str:
        """`<pid>-<start ns>`: the prefix of this log's segment files and its Delta transaction id."""
        return self._writer_id

    @property
    def stats(self) -> LogStats:
        return self._stats

    # -- appending ---------------------------------------------------------------------------------

    def append(self, records: list[Prediction]) -> None:
        """Return once `records` are written and fsync'ed; raise `PredictionLogError` if they are not."""
        if not records:
            return
        group = self._enqueue(b"".join(r.line() for r in records), len(records), None)
        group.done.wait()
        if group.error is not None:
            raise PredictionLogError(f"prediction log write failed: {group.error}") from group.error

    async def append_async(self, records: list[Prediction]) -> None:
        """`append` for an event loop: the loop keeps running while the writer thread commits."""
        if not records:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._enqueue(b"".join(r.line() for r in records), len(records), (loop, future))
        await future

    def _enqueue(self, payload: bytes, n: int,
                 waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None) -> _Group:
        with self._cond:
            if self._closing:
                raise PredictionLogError(f"prediction log {self.directory} is closed")
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="predlog-writer", daemon=True)
                self._writer.start()
            group = self._group
            group.chunks.append(payload)
            group.records += n
            group.callers += 1
            if waiter is not None:
                group.async_waiters.setdefault(waiter[0], []).append(waiter[1])
            if group.callers == 1:
                group.first_at = time.monotonic()
                self._cond.notify()
            elif group.callers == self._target:
                self._cond.notify()
            return group

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._group.callers and not self._closing:
                    self._cond.wait()
                if not self._group.callers:
                    return  # closing, and nothing left to write
                # Group commit: the callers who came while the last write was in flight are one group. With a
                # group_commit_ms, also wait for as many callers as recent groups had, but no longer than that
                # after the first of them came. The service writes at once (0 ms): measured in `loopwise serve`
                # (benchmarks/predlog_service.py), a 2 ms window cost the tabular model 13 % of its requests/s
                # at 8 connections (most groups waited it out, their answers held), writing at once none.
                deadline = self._group.first_at + self.group_commit_s
                while self._group.callers < self._target and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                group, self._group = self._group, _Group()
                self._sizes.append(group.callers)
                self._target = max(self._sizes)
            payload = b"".join(group.chunks)
            try:
                with self._io_lock:
                    self._write(payload)
            except BaseException as error:  # noqa: BLE001 - every waiter must hear of it
                log.exception("prediction log: a write to %s failed; %d records not logged",
                              self.directory, group.records)
                self.rotate()  # what follows goes to a fresh segment, never after a torn line
                group.finish(error)
                continue
            s = self._stats
            self._stats = replace(s, records=s.records + group.records, groups=s.groups + 1, bytes=s.bytes + len(payload))
            group.finish(None)

    def _write(self, payload: bytes) -> None:
        if self._fd is None:
            self._open_segment()
        assert self._fd is not None
        _write_durably(self._fd, payload, self._size)
        self._size += len(payload)
        if self._size >= self.segment_bytes:
            self._seal()

    def _open_segment(self) -> None:
        """Create the next segment and lock it; the lock is what tells flushers it is live."""
        while True:
            path = self.directory / f"{self._writer_id}-{self._seq:06d}.wal"
            self._seq += 1
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # A flusher may have locked and removed the empty file before our lock: retry then.
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except (BlockingIOError, FileNotFoundError):
                pass
            os.close(fd)
        _fsync_dir(self.directory)  # the new file's name survives a power cut
        self._fd, self._size = fd, 0
        self._stats = replace(self._stats, segments=self._stats.segments + 1)

    def rotate(self) -> None:
        """Seal the live segment now, so that the next flush moves it; the next write opens a new one."""
        with self._io_lock:
            self._seal()

    def _seal(self) -> None:
        if self._fd is not None:
            fd, self._fd, self._size = self._fd, None, 0
            os.close(fd)  # releases the lock: the segment is sealed

    # -- flushing into Delta -----------------------------------------------------------------------

    def flush(self) -> int:
        """Move every sealed segment in the directory into Delta exactly once; return the rows moved."""
        moved = 0
        with self._flush_lock:
            while True:
                claimed, more = self._claim_sealed()
                try:
                    moved += self._move(claimed)
                finally:
                    for segment in claimed:
                        os.close(segment.fd)
                if not more:
                    return moved

    def recover(self) -> int:
        """Flush what earlier (stopped or killed) processes left in the directory; return the rows moved."""
        rows = self.flush()
        if rows:
            log.info("prediction log: recovered %d rows left in %s", rows, self.directory)
        return rows

    def _claim_sealed(self) -> tuple[list[_Claimed], bool]:
        """Lock the sealed segments, each writer's in order, stopping at its first live (locked) one.

        Stopping keeps each writer's segments committed in sequence order, which is what lets one
        transaction version per writer say which segments are already in Delta.
        """
        by_writer: dict[str, list[tuple[int, Path]]] = {}
        for path in self.directory.iterdir():
            match = _SEGMENT.match(path.name)
            if match:
                by_writer.setdefault(match["writer"], []).append((int(match["seq"]), path))
        claimed: list[_Claimed] = []
        total = 0
        for writer, segments in sorted(by_writer.items()):
            # Once closed, a lock on this log's own segment is another process's flusher, never a writer:
            # wait for it rather than leave the rest of this log's segments to a later recovery.
            wait_s = _CLOSE_WAIT_S if writer == self._writer_id and self._closing else 0.0
            for seq, path in sorted(segments):
                segment = _try_lock(path, writer, seq, wait_s)
                if segment is _GONE:
                    continue  # deleted by another flusher, which deletes only after its commit
                if segment is None:
                    break  # live, or claimed by another flusher: later segments of this writer wait for it
                assert isinstance(segment, _Claimed)
                if claimed and total + segment.size > _FLUSH_BYTES:
                    os.close(segment.fd)
                    return claimed, True
                claimed.append(segment)
                total += segment.size
        return claimed, False

    def _move(self, claimed: list[_Claimed]) -> int:
        if not claimed:
            return 0
        delta = self.table.delta()
        committed = {w: delta.transaction_version(_APP_ID + w) if delta is not None else None
                     for w in {s.writer for s in claimed}}
        rows: list[list] = []
        versions: dict[str, int] = {}
        names: list[str] = []
        for segment in claimed:
            done = committed[segment.writer]
            if done is not None and segment.seq <= done:
                continue  # committed by a flusher that stopped before deleting it
            read = read_segment(_read_all(segment.fd, segment.size))
            if read.dropped_lines:
                log.warning("prediction log: dropped %d torn line(s) (%d bytes) of %s, cut short or failing "
                            "their checksum (a kill or a power cut mid-write); no caller was told they were logged",
                            read.dropped_lines, read.dropped_bytes, segment.path)
            rows.extend(read.rows)
            versions[segment.writer] = segment.seq
            names.append(segment.path.name)
        if rows:
            now = int(time.time() * 1000)
            write_deltalake(
                self.table.uri, to_arrow(rows), mode="append", partition_by=list(self.table.partition_by),
                schema_mode="merge",  # a table from before latency, status and served were logged gains them
                storage_options=self.table.storage_options or None,
                commit_properties=CommitProperties(
                    custom_metadata={"loopwise.predlog.segments": ",".join(names)},
                    app_transactions=[Transaction(_APP_ID + w, v, now) for w, v in sorted(versions.items())],
                ),
            )
        if self._between_commit_and_delete is not None:
            self._between_commit_and_delete()
        for segment in claimed:
            segment.path.unlink(missing_ok=True)  # a delete lost to a crash is skipped next time by its txn
        return len(rows)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start_flusher(self, interval_s: float) -> None:
        """Recover what earlier processes left, then every `interval_s` seal this process's segment and flush.

        Rotating on each tick bounds how stale the Delta table is (about `interval_s`), at one Delta commit
        per tick and worker while there is traffic: compact the table (OPTIMIZE) on a schedule.
        """
        if self._flusher is not None and self._flusher.is_alive():
            return
        self._flusher_stop.clear()
        self._flusher = threading.Thread(target=self._flush_loop, args=(interval_s,), name="predlog-flusher",
                                         daemon=True)
        self._flusher.start()

    def _flush_loop(self, interval_s: float) -> None:
        first = True
        while not self._flusher_stop.is_set():
            try:
                if first:
                    self.recover()
                    first = False
                else:
                    if self._size:
                        self.rotate()
                    self.flush()
            except Exception:
                log.exception("prediction log: flushing %s into %s failed; the segments stay on disk and "
                              "the next flush retries", self.directory, self.table.uri)
            self._flusher_stop.wait(interval_s)

    def close(self) -> int:
        """Write what is queued, seal this process's segment, stop the flusher and flush; return rows moved."""
        if self._flusher is not None:
            self._flusher_stop.set()
            self._flusher.join()
            self._flusher = None
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join()
        self.rotate()
        return self.flush()

    def _after_fork_in_child(self) -> None:
        """A forked worker must not write into its parent's segment: drop the inherited state."""
        if self._fd is not None:
            os.close(self._fd)  # this copy only: the parent's lock stays while the parent holds it
        self._flush_lock = threading.Lock()
        self._flusher = None
        self._flusher_stop = threading.Event()
        self._start_writer_state()


def _try_lock(path: Path, writer: str, seq: int, wait_s: float = 0.0) -> _Claimed | object | None:
    """The segment locked by this flusher; `_GONE` if it was deleted; None if someone else holds it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return _GONE
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)
            continue
        stat = os.fstat(fd)
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current != stat.st_ino:  # removed by another flusher between our open and our lock
            os.close(fd)
            return _GONE
        return _Claimed(path, writer, seq, fd, stat.st_size)


def _read_all(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 16 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _write_durably(fd: int, payload: bytes, offset: int) -> None:
    """Write `payload` at `offset` and return once it and the file size are on disk.

    One `pwritev2(RWF_DSYNC)` where the kernel has it: write and fdatasync in one system call. The writer
    thread needs the GIL back after every system call, and behind a busy event loop each reacquisition
    can wait out a whole switch interval (5 ms), so one call instead of two halves that wait.
    """
    global _DSYNC
    view = memoryview(payload)
    while view and _DSYNC:
        try:
            written = os.pwritev(fd, [view], offset, os.RWF_DSYNC)
        except OSError as error:
            if error.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS) or len(view) < len(payload):
                raise
            _DSYNC = False  # this kernel or file system refuses the flag: write, then fdatasync
            break
        view, offset = view[written:], offset + written
    if not view:
        return
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
    # fdatasync flushes the data and the file size (what a reader needs), not the mtime.
    os.fdatasync(fd)


_DSYNC = hasattr(os, "RWF_DSYNC") and hasattr(os, "pwritev")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reset_after_fork() -> None:
    for prediction_log in list(_OPEN_LOGS):
        prediction_log._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_after_fork)

