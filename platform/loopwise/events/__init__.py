"""The audit trail: an append-only, hash-chained event store with resumable consumers."""

from loopwise.events.store import Event, EventStore, Record, VerifyReport, open_store

__all__ = ["Event", "EventStore", "Record", "VerifyReport", "open_store"]
