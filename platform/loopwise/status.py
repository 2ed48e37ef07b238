"""What `loopwise status` shows: model versions' states, each asset group's freshness, serving."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from loopwise.events.store import EventStore
from loopwise.lake.tables import Lake, TableRef
from loopwise.lifecycle import Lifecycle, VersionState
from loopwise.pipelines import stages
from loopwise.usecase import UseCase


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
    traffic: dict[str, list[dict[str, str | float]]] = field(default_factory=dict)  # model -> its arms


def _last_commit(table: TableRef) -> datetime | None:
    history = table.history(1)
    if not history:
        return None
    return datetime.fromtimestamp(history[0]["timestamp"] / 1000, tz=UTC)


def group_tables(lake: Lake, use_case: UseCase) -> dict[str, list[TableRef]]:
    """The Delta tables behind each asset group: the data layer's stages, features, each model's training set."""
    sources = [s.name for s in use_case.sources]
    return {
        "raw": [stages.raw_table(lake, s) for s in sources],
        "bronze": [stages.bronze_table(lake, s) for s in sources],
        "silver": [stages.silver_table(lake, s) for s in sources],
        "features": [lake.table(t.name) for t in use_case.feature_tables],
        **{model.slug: [lake.table(model.training_table)] for model in use_case.models},
    }


def group_freshness(lake: Lake, use_case: UseCase) -> list[GroupFreshness]:
    """Per asset group, how many of its tables exist and when the least recently committed one was."""
    out = []
    for group, tables in group_tables(lake, use_case).items():
        commits = [_last_commit(t) for t in tables]
        present = [c for c in commits if c is not None]
        out.append(GroupFreshness(group, len(commits), len(present), min(present) if len(present) == len(commits) else None))
    return out


def traffic(store: EventStore, use_case: UseCase) -> dict[str, list[dict[str, str | float]]]:
    """Each deployed model's traffic split (its rollout's arms), as recorded in the state store."""
    from loopwise.rollout import current

    out: dict[str, list[dict[str, str | float]]] = {}
    for model in use_case.models:
        rollout = current(store, model.name)
        if rollout is not None:
            strategy = rollout.strategy.value if rollout.champion_version else "release"  # a first version
            out[model.name] = [{"version": a.version, "arm": a.name, "share": a.weight, "strategy": strategy,
                                "status": rollout.status.value} for a in rollout.arms]
    return out


def platform_status(store: EventStore, lake: Lake, use_case: UseCase) -> PlatformStatus:
    return PlatformStatus(Lifecycle(store).versions(), group_freshness(lake, use_case), traffic(store, use_case))
