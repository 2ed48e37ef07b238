"""The audit trail's event store."""

from __future__ import annotations

import dagster as dg
from loopwise.events import EventStore, open_store
from loopwise.secrets import get_secret


class EventStoreResource(dg.ConfigurableResource):
    """SQLite embedded or PostgreSQL; the password is a secret named in configuration."""

    url: str
    password_secret: str | None = None

    def store(self) -> EventStore:
        return open_store(self.url, get_secret(self.password_secret) if self.password_secret else None)
