"""The audit trail: an append-only, hash-chained event store with resumable consumers."""

from loopwise.config import Settings
from loopwise.events.store import Event, EventStore, Record, VerifyReport, open_store
from loopwise.secrets import get_secret


def open_for(settings: Settings) -> EventStore:
    """The profile's event store; a missing password secret fails here, naming the secret."""
    password = get_secret(settings.events.password_secret) if settings.events.password_secret else None
    return open_store(settings.events_url, password)


__all__ = ["Event", "EventStore", "Record", "VerifyReport", "open_for", "open_store"]
