"""The audit trail on SQLite and on a real PostgreSQL server: chained, tamper-evident, resumable."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopwise.events import Event, EventStore, open_store
from loopwise.lifecycle import REFUSED, IllegalTransition, Lifecycle, State

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}", None
        return
    server = request.getfixturevalue("postgres")
    import psycopg

    name = f"t{os.getpid()}_{abs(hash(request.node.name)) % 10**8}"
    with psycopg.connect(server.url, password=server.password, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield server.url.rsplit("/", 1)[0] + f"/{name}", server.password


@pytest.fixture
def store(store_url: tuple[str, str | None]) -> Iterator[EventStore]:
    s = open_store(*store_url)
    yield s
    s.close()


def raw_sql(store_url: tuple[str, str | None], *statements: str) -> None:
    """Tamper with the table directly, as someone with database access could."""
    url, password = store_url
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        for s in statements:
            conn.execute(s.replace("DISABLE TRIGGER audit_events_append_only", "").strip() or "SELECT 1")
        conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(url, password=password, autocommit=True) as conn:
            for s in statements:
                conn.execute(s)


def fill(store: EventStore, n: int = 6) -> None:
    for i in range(n):
        store.append(Event("asset.materialized", "asset:silver_orders", {"partition": f"2026-03-0{i + 1}"}))


def test_records_are_chained_and_verify(store: EventStore) -> None:
    fill(store)
    records = store.read()
    assert [r.seq for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(b.prev_hash == a.hash for a, b in zip(records, records[1:], strict=False))
    assert store.verify().ok


def test_updates_and_deletes_are_refused(store: EventStore, store_url) -> None:
    fill(store, 2)
    url, password = store_url
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit_events SET reason = 'x' WHERE seq = 1")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit_events WHERE seq = 1")
    else:
        import psycopg

        with psycopg.connect(url, password=password, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute("UPDATE audit_events SET reason = 'x' WHERE seq = 1")


DROP_GUARDS = {
    "sqlite": ["DROP TRIGGER audit_events_no_update", "DROP TRIGGER audit_events_no_delete"],
    "postgres": ["ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"],
}


def _guards(store_url) -> list[str]:
    return DROP_GUARDS["sqlite" if store_url[0].startswith("sqlite") else "postgres"]


def test_an_edited_record_is_named(store: EventStore, store_url) -> None:
    fill(store)
    raw_sql(store_url, *_guards(store_url), "UPDATE audit_events SET payload = '{\"partition\": \"2026-01-01\"}' WHERE seq = 3")
    report = store.verify()
    assert report.problems == ["record 3 was edited: its content does not match its hash"]


def test_a_deleted_record_is_named(store: EventStore, store_url) -> None:
    fill(store)
    raw_sql(store_url, *_guards(store_url), "DELETE FROM audit_events WHERE seq = 4")
    report = store.verify()
    assert not report.ok
    assert "record 4 is missing (deleted?) before record 5" in report.problems[0]


def test_reordered_records_are_named(store: EventStore, store_url) -> None:
    fill(store)
    # Swap the content of records 2 and 3 but keep each row's own hash consistent with it:
    # only the chain (prev_hash) can tell.
    rows = {r.seq: r for r in store.read()}
    a, b = rows[2], rows[3]
    from loopwise.events.store import chain_hash

    def rewrite(seq: int, src, prev: str) -> str:
        payload = json.dumps(src.payload, sort_keys=True)
        digest = chain_hash(seq, src.at, src.kind, src.subject, src.actor, src.reason, payload, src.key, prev)
        return (f"UPDATE audit_events SET at = '{src.at}', payload = '{payload}', prev_hash = '{prev}', "
                f"hash = '{digest}' WHERE seq = {seq}")

    raw_sql(store_url, *_guards(store_url), rewrite(2, b, a.prev_hash))
    report = store.verify()
    assert not report.ok and any("record 3" in p for p in report.problems)


def test_an_idempotency_key_appends_once(store: EventStore) -> None:
    first = store.append(Event("asset.materialized", "asset:x", {"n": 1}, key="dagster:41"))
    again = store.append(Event("asset.materialized", "asset:x", {"n": 1}, key="dagster:41"))
    assert first == again and store.last_seq() == 1


def test_a_crashed_consumer_resumes_without_loss_or_duplicates(store: EventStore, store_url) -> None:
    fill(store, 40)
    url, password = store_url
    script = f"""
import os, signal, sys
from loopwise.events import open_store
store = open_store({url!r}, {password!r})
count = 0
def handle(record, cur):
    global count
    cur.execute("CREATE TABLE IF NOT EXISTS handled (seq BIGINT PRIMARY KEY)")
    cur.execute("INSERT INTO handled VALUES (?)", (record.seq,))
    count += 1
    if count == 17 and sys.argv[1] == "crash":
        os.kill(os.getpid(), signal.SIGKILL)  # dies mid-transaction, after its effect, before the ack
store.consume("projector", handle)
"""
    crashed = subprocess.run([sys.executable, "-c", script, "crash"], cwd=ROOT, capture_output=True, text=True)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert store.offset("projector") == 16
    fill(store, 5)  # more events arrive while it is down
    resumed = subprocess.run([sys.executable, "-c", script, "run"], cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert store.offset("projector") == 45
    assert _handled(store) == list(range(1, 46))


def _handled(store: EventStore) -> list[int]:
    with store._tx() as cur:  # the consumer's own projection table
        cur.execute("SELECT seq FROM handled ORDER BY seq")
        return [int(r[0]) for r in cur.fetchall()]


def test_a_waiting_consumer_is_woken_by_a_new_event(store: EventStore, store_url) -> None:
    fill(store, 1)
    woken: list[bool] = []
    waiter = threading.Thread(target=lambda: woken.append(open_store(*store_url).wait_for_events(1, timeout=60)))
    waiter.start()
    open_store(*store_url).append(Event("manual.action", "asset:x", {"action": "poke"}))
    waiter.join(timeout=90)
    assert woken == [True]


def test_export_writes_json_lines_that_reverify(store: EventStore, tmp_path: Path) -> None:
    fill(store, 3)
    out = tmp_path / "audit.jsonl"
    assert store.export(out) == 3
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3] and lines[1]["prev_hash"] == lines[0]["hash"]


def test_lifecycle_allows_the_path_to_champion_and_refuses_shortcuts(store: EventStore) -> None:
    lifecycle = Lifecycle(store)
    for state in ("trained", "validated", "challenger", "shadow", "canary", "champion"):
        lifecycle.transition("ticket-escalation", 1, state, reason=f"to {state}")
    assert lifecycle.state("ticket-escalation", 1) == State.CHAMPION
    lifecycle.transition("ticket-escalation", 2, "trained")
    with pytest.raises(IllegalTransition, match="cannot move from trained to champion; allowed: retired, validated"):
        lifecycle.transition("ticket-escalation", 2, "champion", actor="alice", reason="skip the canary")
    assert lifecycle.state("ticket-escalation", 2) == State.TRAINED
    refused = store.read(kind=REFUSED)
    assert len(refused) == 1 and refused[0].actor == "alice" and refused[0].payload["to"] == "champion"
    with pytest.raises(IllegalTransition):
        lifecycle.transition("ticket-escalation", 1, "canary")  # champion -> canary is not a path
    assert [(v.version, v.state) for v in lifecycle.versions("ticket-escalation")] == [("1", State.CHAMPION), ("2", State.TRAINED)]
    assert store.verify().ok
