"""Feast, configured from the Loopwise profile: apply with a diff, training sets, the online store.

The registry and the SQLite online store live under the data root; `prod` uses Redis. The feature
definitions are the Feast repository in `feature_repo/`.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopwise.config import Settings
from loopwise.secrets import get_secret

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore

PROJECT = "loopwise"


def repo_config(settings: Settings, repo_dir: Path) -> Any:
    """The Feast RepoConfig of a profile."""
    from feast.repo_config import RepoConfig

    from loopwise.features.offline import LakeOfflineStoreConfig

    settings.paths.feast.mkdir(parents=True, exist_ok=True)
    if settings.features.online_store == "redis":
        from feast.infra.online_stores.redis import RedisOnlineStoreConfig

        connection = settings.features.redis_url
        if settings.features.redis_password_secret:
            connection += f",password={get_secret(settings.features.redis_password_secret)}"
        online: Any = RedisOnlineStoreConfig(connection_string=connection)
    else:
        from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

        online = SqliteOnlineStoreConfig(path=str(settings.paths.feast / "online.db"))
    return RepoConfig(
        project=PROJECT, provider="local", registry=str(settings.paths.feast / "registry.db"),
        online_store=online, offline_store=LakeOfflineStoreConfig(spark_remote=settings.spark.remote),
        entity_key_serialization_version=3,
        repo_path=str(repo_dir),
    )


def feature_store(settings: Settings, repo_dir: Path) -> FeatureStore:
    from feast import FeatureStore

    return FeatureStore(config=repo_config(settings, repo_dir))


@dataclass
class ApplyDiff:
    """What `feast apply` changed: objects and individual features."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    added_features: list[str] = field(default_factory=list)
    removed_features: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


def _features(views: list[Any]) -> set[str]:
    return {f"{v.name}.{f.name}" for v in views for f in v.features}


def apply_repo(store: FeatureStore, repo_dir: Path) -> ApplyDiff:
    """Register the repository's definitions (like `feast apply`) and report the diff."""
    from feast.diff.property_diff import TransitionType
    from feast.repo_operations import extract_objects_for_apply_delete, parse_repo

    repo_dir = repo_dir.resolve()
    if str(repo_dir) not in sys.path:
        sys.path.insert(0, str(repo_dir))  # the repository's modules import each other by name
    with contextlib.chdir(repo_dir):  # Feast names the repository's modules relative to the cwd
        repo = parse_repo(repo_dir)
    before = _features(store.list_feature_views())
    registry_diff, _, _ = store.plan(repo)
    diff = ApplyDiff()
    for object_diff in registry_diff.feast_object_diffs:
        if object_diff.feast_object_type.name == "PROJECT":
            continue  # the project is implicit in the repository, never declared in it
        name = f"{object_diff.feast_object_type.name.lower()}:{object_diff.name}"
        if object_diff.transition_type == TransitionType.CREATE:
            diff.added.append(name)
        elif object_diff.transition_type == TransitionType.UPDATE:
            diff.changed.append(name)
        elif object_diff.transition_type == TransitionType.DELETE:
            diff.removed.append(name)
    to_apply, to_delete, _, _ = extract_objects_for_apply_delete(PROJECT, store.registry, repo)
    store.apply(to_apply, objects_to_delete=to_delete, partial=False)
    after = _features(store.list_feature_views())
    diff.added_features, diff.removed_features = sorted(after - before), sorted(before - after)
    return diff


def historical_features(store: FeatureStore, entity_df: pd.DataFrame, service: str) -> pd.DataFrame:
    """Point-in-time join of `entity_df` (customer_id, event_timestamp, ...) with a feature service."""
    return store.get_historical_features(entity_df=entity_df, features=store.get_feature_service(service)).to_df()
