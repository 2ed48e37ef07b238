"""What `loopwise status` shows: model versions' states, each asset group's freshness, serving."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from loopwise.contracts import SOURCES
from loopwise.events.store import EventStore
from loopwise.lake.tables import Lake, TableRef
from loopwise.lifecycle import Lifecycle, VersionState
from loopwise.pipelines import stages


@dataclass
class GroupFreshness:
    group: str
    tables: int
    materialized: int
    last_commit: datetime | None

    def age(self, now: datetime) -> str:
        if self.last_commit is None:
            return "never materialized"
        minutes = int((now - self.last_commit).total_seconds() // 60)
        return f"{minutes // 60} h {minutes % 60} min ago" if minutes >= 60 else f"{minutes} min ago"


@dataclass
class PlatformStatus:
    versions: list[VersionState]
    groups: list[GroupFreshness]
    traffic: dict[str, float] = field(default_factory=dict)  # filled once serving exists


def _last_commit(table: TableRef) -> datetime | None:
    history = table.history(1)
    if not history:
        return None
    return datetime.fromtimestamp(history[0]["timestamp"] / 1000, tz=UTC)


def group_freshness(lake: Lake) -> list[GroupFreshness]:
    """Per asset group, how many of its tables exist and when the most recent was committed."""
    groups = {"raw": stages.raw_table, "bronze": stages.bronze_table, "silver": stages.silver_table}
    out = []
    for group, table_for in groups.items():
        commits = [_last_commit(table_for(lake, s)) for s in SOURCES]
        present = [c for c in commits if c is not None]
        out.append(GroupFreshness(group, len(commits), len(present), min(present) if len(present) == len(commits) else None))
    return out


def platform_status(store: EventStore, lake: Lake) -> PlatformStatus:
    return PlatformStatus(Lifecycle(store).versions(), group_freshness(lake))
