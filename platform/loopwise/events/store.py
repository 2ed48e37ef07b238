"""An append-only event store where each record carries the hash of the one before.

One implementation, two backends: SQLite embedded (dev), PostgreSQL in prod. They differ only in
how a connection is made, the parameter style, the lock that serializes appends, and how a
consumer is woken (an in-process condition, or PostgreSQL LISTEN/NOTIFY). Triggers refuse UPDATE
and DELETE; the hash chain detects what gets past them: `verify` names any edited, reordered or
deleted record.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loopwise.secrets import redact

GENESIS = "0" * 64
_COLUMNS = "seq, at, kind, subject, actor, reason, payload, key, prev_hash, hash"
CHANNEL = "loopwise_events"
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS audit_events (
        seq BIGINT PRIMARY KEY, at TEXT NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL,
        actor TEXT NOT NULL, reason TEXT NOT NULL, payload TEXT NOT NULL, key TEXT UNIQUE,
        prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS audit_consumers (name TEXT PRIMARY KEY, last_seq BIGINT NOT NULL)",
    # The lifecycle reads one subject's transitions on every move.
    "CREATE INDEX IF NOT EXISTS audit_events_subject ON audit_events (subject, kind)",
]
_SQLITE_GUARDS = [
    """CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events
       BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events
       BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
]
_POSTGRES_GUARDS = [
    """CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger AS $$
       BEGIN RAISE EXCEPTION 'audit events are append-only'; END $$ LANGUAGE plpgsql""",
    """CREATE OR REPLACE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
       FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()""",
]


@dataclass(frozen=True)
class Event:
    """A state change: what happened (kind) to what (subject), who did it and why."""

    kind: str
    subject: str
    payload: dict[str, Any] = field(default_factory=dict)
    actor: str = "system"
    reason: str = ""
    key: str | None = None  # idempotency key: appending an event whose key exists returns the stored one


@dataclass(frozen=True)
class Record:
    """A stored event: its place in the chain, when, and the hashes that bind it."""

    seq: int
    at: str
    kind: str
    subject: str
    actor: str
    reason: str
    payload: dict[str, Any]
    key: str | None
    prev_hash: str
    hash: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)


def chain_hash(seq: int, at: str, kind: str, subject: str, actor: str, reason: str, payload: str,
               key: str | None, prev_hash: str) -> str:
    body = json.dumps([seq, at, kind, subject, actor, reason, payload, key, prev_hash], ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass
class VerifyReport:
    """The outcome of walking the chain: every problem, each naming its record."""

    records: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class EventStore:
    """Append, read, verify and consume events; the backend is chosen by `open_store`."""

    def __init__(self, connect: Callable[[], Any], dialect: str) -> None:
        self._connect = connect
        self.dialect = dialect
        self._local = threading.local()
        self._appended = threading.Condition()
        with self._tx() as cur:
            if dialect == "postgres":
                # Stores opened at the same time would deadlock on the catalog: one schema change at a time.
                cur.execute("SELECT pg_advisory_xact_lock(4243)")
            for statement in _SCHEMA + (_SQLITE_GUARDS if dialect == "sqlite" else _POSTGRES_GUARDS):
                cur.execute(statement)

    # -- connections and transactions -------------------------------------------------
    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.dialect == "postgres" else statement

    @contextmanager
    def _tx(self, exclusive: bool = False) -> Iterator[Any]:
        conn = self._conn()
        cur = conn.cursor()
        if self.dialect == "sqlite":
            cur.execute("BEGIN IMMEDIATE" if exclusive else "BEGIN")
        elif exclusive:
            cur.execute("SELECT pg_advisory_xact_lock(4242)")  # serializes appends: one chain
        try:
            yield _Cursor(cur, self._sql)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- writing ---------------------------------------------------------------------
    def append(self, event: Event) -> Record:
        """Append one event (secrets redacted) and return it as stored, chained to the last."""
        payload = json.dumps(redact(event.payload), sort_keys=True, ensure_ascii=False, default=str)
        subject, actor, reason = redact(event.subject), redact(event.actor), redact(event.reason)
        with self._tx(exclusive=True) as cur:
            if event.key is not None:
                cur.execute(f"SELECT {_COLUMNS} FROM audit_events WHERE key = ?", (event.key,))
                existing = cur.fetchone()
                if existing:
                    return self._record(existing)
            cur.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            last = cur.fetchone()
            seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
            at = datetime.now(UTC).isoformat(timespec="microseconds")
            digest = chain_hash(seq, at, event.kind, subject, actor, reason, payload, event.key, prev)
            cur.execute(f"INSERT INTO audit_events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (seq, at, event.kind, subject, actor, reason, payload, event.key, prev, digest))
            if self.dialect == "postgres":
                cur.execute("SELECT pg_notify(?, ?)", (CHANNEL, str(seq)))
        with self._appended:
            self._appended.notify_all()
        return Record(seq, at, event.kind, subject, actor, reason, json.loads(payload), event.key, prev, digest)

    # -- reading ---------------------------------------------------------------------
    def read(self, after: int = 0, limit: int | None = None, kind: str | None = None,
             subject: str | None = None) -> list[Record]:
        """Records after sequence number `after`, oldest first, optionally filtered."""
        where, args = ["seq > ?"], [after]
        if kind:
            where.append("kind LIKE ?")
            args.append(kind.replace("*", "%"))
        if subject:
            where.append("subject = ?")
            args.append(subject)
        statement = f"SELECT {_COLUMNS} FROM audit_events WHERE {' AND '.join(where)} ORDER BY seq"
        if limit:
            statement += f" LIMIT {int(limit)}"
        with self._tx() as cur:
            cur.execute(statement, tuple(args))
            return [self._record(row) for row in cur.fetchall()]

    @staticmethod
    def _record(row: tuple[Any, ...]) -> Record:
        seq, at, kind, subject, actor, reason, payload, key, prev_hash, digest = row
        return Record(int(seq), at, kind, subject, actor, reason, json.loads(payload), key, prev_hash, digest)

    def last_seq(self) -> int:
        with self._tx() as cur:
            cur.execute("SELECT MAX(seq) FROM audit_events")
            value = cur.fetchone()[0]
        return int(value or 0)

    def verify(self) -> VerifyReport:
        """Walk the chain; name every record that was edited, reordered or deleted."""
        with self._tx() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM audit_events ORDER BY seq")
            rows = cur.fetchall()
        report = VerifyReport(len(rows))
        expected_seq, prev = 1, GENESIS
        for seq, at, kind, subject, actor, reason, payload, key, prev_hash, digest in rows:
            if seq != expected_seq:
                missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}..{seq - 1}"
                report.problems.append(f"record {missing} is missing (deleted?) before record {seq}")
            if chain_hash(seq, at, kind, subject, actor, reason, payload, key, prev_hash) != digest:
                report.problems.append(f"record {seq} was edited: its content does not match its hash")
            elif prev_hash != prev:
                report.problems.append(f"record {seq} does not follow the record before it "
                                       "(reordered, or its predecessor was changed or removed)")
            expected_seq, prev = seq + 1, digest
        return report

    def export(self, path: Path) -> int:
        """Write every record as JSON lines; returns how many."""
        records = self.read()
        with path.open("w") as f:
            for record in records:
                f.write(record.to_json() + "\n")
        return len(records)

    # -- consumers -------------------------------------------------------------------
    def offset(self, consumer: str) -> int:
        with self._tx() as cur:
            cur.execute("SELECT last_seq FROM audit_consumers WHERE name = ?", (consumer,))
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def consume(self, consumer: str, handle: Callable[[Record, Any], None], limit: int | None = None) -> int:
        """Hand each new event to `handle` and acknowledge it in the same transaction.

        `handle(record, cursor)` may write its own effects through `cursor`: the effect and the
        acknowledgement commit together, so a consumer that crashes resumes at the first
        unacknowledged event with nothing missed and nothing applied twice. Effects outside the
        store should use `record.seq` as an idempotency key. Returns how many were handled.
        """
        handled = 0
        while limit is None or handled < limit:
            with self._tx(exclusive=self.dialect == "sqlite") as cur:
                cur.execute("SELECT last_seq FROM audit_consumers WHERE name = ?", (consumer,))
                row = cur.fetchone()
                after = int(row[0]) if row else 0
                cur.execute(f"SELECT {_COLUMNS} FROM audit_events WHERE seq > ? ORDER BY seq LIMIT 1", (after,))
                event = cur.fetchone()
                if event is None:
                    return handled
                record = self._record(event)
                handle(record, cur)
                if row:
                    cur.execute("UPDATE audit_consumers SET last_seq = ? WHERE name = ?", (record.seq, consumer))
                else:
                    cur.execute("INSERT INTO audit_consumers VALUES (?, ?)", (consumer, record.seq))
            handled += 1
        return handled

    def wait_for_events(self, after: int, timeout: float) -> bool:
        """Block until an event after `after` exists or `timeout` passes (NOTIFY in PostgreSQL)."""
        if self.dialect == "postgres":
            listener = self._connect()
            try:
                listener.autocommit = True
                listener.execute(f"LISTEN {CHANNEL}")
                if self.last_seq() > after:
                    return True
                for _ in listener.notifies(timeout=timeout, stop_after=1):
                    return True
                return self.last_seq() > after
            finally:
                listener.close()
        deadline = time.monotonic() + timeout
        while self.last_seq() <= after:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._appended:  # woken at once by appends in this process; other processes are polled
                self._appended.wait(min(remaining, 0.2))
        return True


class _Cursor:
    """A DB-API cursor that accepts `?` placeholders on every backend."""

    def __init__(self, cursor: Any, translate: Callable[[str], str]) -> None:
        self._cursor, self._translate = cursor, translate

    def execute(self, statement: str, args: tuple[Any, ...] = ()) -> None:
        self._cursor.execute(self._translate(statement), args)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()


def open_store(url: str, password: str | None = None) -> EventStore:
    """`sqlite:///path/events.db` (embedded) or `postgresql://user@host:port/db` (prod).

    The PostgreSQL password comes from a secret, never from the URL in configuration.
    """
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)

        def connect_sqlite() -> sqlite3.Connection:
            conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            return conn  # autocommit; _tx opens BEGIN and commit()/rollback() end it

        return EventStore(connect_sqlite, "sqlite")
    if url.startswith(("postgresql://", "postgres://")):
        import psycopg

        return EventStore(lambda: psycopg.connect(url, password=password), "postgres")
    raise ValueError(f"unsupported event store URL {url!r}: use sqlite:///path or postgresql://user@host:port/db")
