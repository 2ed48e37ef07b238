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


def group_tables(lake: Lake) -> dict[str, list[TableRef]]:
    """The Delta tables behind each asset group."""
    from loopwise.features import stages as features

    return {
        "raw": [stages.raw_table(lake, s) for s in SOURCES],
        "bronze": [stages.bronze_table(lake, s) for s in SOURCES],
        "silver": [stages.silver_table(lake, s) for s in SOURCES],
        "features": [lake.table(features.ORDER_FEATURES), lake.table(features.SUPPORT_FEATURES)],
        "training": [lake.table(features.TRAINING_SET)],
    }


def group_freshness(lake: Lake) -> list[GroupFreshness]:
    """Per asset group, how many of its tables exist and when the least recently committed one was."""
    out = []
    for group, tables in group_tables(lake).items():
        commits = [_last_commit(t) for t in tables]
        present = [c for c in commits if c is not None]
        out.append(GroupFreshness(group, len(commits), len(present), min(present) if len(present) == len(commits) else None))
    return out


def platform_status(store: EventStore, lake: Lake) -> PlatformStatus:
    return PlatformStatus(Lifecycle(store).versions(), group_freshness(lake))
