"""Feast, configured from the Loopwise profile: apply with a diff, training sets, the online store.

The registry and the SQLite online store live under the data root; `prod` uses Redis. The feature
definitions are the Feast repository in `feature_repo/`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopwise.config import Settings
from loopwise.secrets import get_secret

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore

PROJECT = "loopwise"


@dataclass(frozen=True)
class FeastLocation:
    """Where Feast keeps its registry and online store, and what computes offline retrievals."""

    repo_dir: Path
    feast_dir: Path
    online_store: str = "sqlite"
    redis_url: str = "127.0.0.1:6379"
    redis_password_secret: str | None = None
    spark_remote: str | None = None

    @classmethod
    def of(cls, settings: Settings, repo_dir: Path) -> FeastLocation:
        f = settings.features
        return cls(repo_dir, settings.paths.feast, f.online_store, f.redis_url, f.redis_password_secret,
                   settings.spark.remote)


def repo_config(location: FeastLocation, offline_store: Any | None = None) -> Any:
    """The Feast RepoConfig: registry and SQLite under the data root, or Redis; the lake offline store
    (`offline_store` replaces it, e.g. with Feast's own for a side-by-side benchmark)."""
    from feast.repo_config import RepoConfig

    from loopwise.features.offline import LakeOfflineStoreConfig

    location.feast_dir.mkdir(parents=True, exist_ok=True)
    if location.online_store == "redis":
        from feast.infra.online_stores.redis import RedisOnlineStoreConfig

        connection = location.redis_url
        if location.redis_password_secret:
            connection += f",password={get_secret(location.redis_password_secret)}"
        online: Any = RedisOnlineStoreConfig(connection_string=connection)
    else:
        from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

        online = SqliteOnlineStoreConfig(path=str(location.feast_dir / "online.db"))
    return RepoConfig(
        project=PROJECT, provider="local", registry=str(location.feast_dir / "registry.db"),
        online_store=online, offline_store=offline_store or LakeOfflineStoreConfig(spark_remote=location.spark_remote),
        entity_key_serialization_version=3, repo_path=str(location.repo_dir),
    )


def feature_store(location: FeastLocation | Settings, repo_dir: Path | None = None) -> FeatureStore:
    """A Feast FeatureStore for a location (or a profile and the repository folder)."""
    from feast import FeatureStore

    if isinstance(location, Settings):
        assert repo_dir is not None, "a profile needs the feature repository's folder"
        location = FeastLocation.of(location, repo_dir)
    return FeatureStore(config=repo_config(location))


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


def repo_digest(repo_dir: Path, lake_uri: str | None = None) -> str:
    """A digest of the Feast repository's definitions (and the lake its sources point at): it changes
    exactly when `feature_repo/` does, or when the same registry is applied for another lake."""
    digest = hashlib.sha256((lake_uri or "").encode() + b"\0")
    for path in sorted(repo_dir.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _applied_marker(store: FeatureStore) -> Path | None:
    """Where the digest of the last applied repository is kept: beside a file registry (None for others)."""
    registry = store.config.registry
    path = registry if isinstance(registry, str) else getattr(registry, "path", "")
    return None if "://" in str(path) else Path(path).parent / "applied_repo.digest"


def ensure_applied(store: FeatureStore, repo_dir: Path, lake_uri: str | None = None) -> ApplyDiff | None:
    """Apply the repository when the registry lacks it or `feature_repo/` changed since; None when current.

    Every path that reads Feast's registry calls this first, so a fresh instance works from any entry
    point (a job, a backfill, one asset) without materializing `feast_registry` by hand first.
    """
    marker = _applied_marker(store)
    current = marker is not None and marker.exists() and marker.read_text() == repo_digest(repo_dir, lake_uri)
    if current and store.list_feature_views():
        return None
    return apply_repo(store, repo_dir, lake_uri)


@contextlib.contextmanager
def _lake_for_repo(lake_uri: str | None) -> Iterator[None]:
    """The repository's data sources read the lake's location from the profile (`lake.uri`): point it at
    this store's lake while the repository is parsed, whatever the process environment says."""
    if lake_uri is None:
        yield
        return
    before = os.environ.get("LOOPWISE__LAKE__URI")
    os.environ["LOOPWISE__LAKE__URI"] = lake_uri
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LOOPWISE__LAKE__URI", None)
        else:
            os.environ["LOOPWISE__LAKE__URI"] = before


def apply_repo(store: FeatureStore, repo_dir: Path, lake_uri: str | None = None) -> ApplyDiff:
    """Register the repository's definitions (like `feast apply`) for the lake at `lake_uri`; report the diff."""
    from feast.diff.property_diff import TransitionType
    from feast.repo_operations import extract_objects_for_apply_delete, parse_repo

    repo_dir = repo_dir.resolve()
    # The repository's modules import each other by name: import this repository's files, fresh
    # (they read the profile on import), and leave sys.path as it was.
    for name in {p.stem for p in repo_dir.glob("*.py")}:
        sys.modules.pop(name, None)
    sys.path.insert(0, str(repo_dir))
    try:
        with contextlib.chdir(repo_dir), _lake_for_repo(lake_uri):  # Feast names the modules relative to the cwd
            repo = parse_repo(repo_dir)
    finally:
        sys.path.remove(str(repo_dir))
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
    marker = _applied_marker(store)
    if marker is not None:
        marker.write_text(repo_digest(repo_dir, lake_uri))
    return diff


def historical_features(store: FeatureStore, entity_df: pd.DataFrame, service: str) -> pd.DataFrame:
    """Point-in-time join of `entity_df` (join keys, event_timestamp, ...) with a feature service."""
    return store.get_historical_features(entity_df=entity_df, features=store.get_feature_service(service)).to_df()
