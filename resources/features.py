"""The Feast feature store (registry, online store) over the lake."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from loopwise.features.store import FeastLocation, feature_store

if TYPE_CHECKING:
    from feast import FeatureStore  # imported where features are used, not when definitions load


class FeatureStoreResource(dg.ConfigurableResource):
    """Feast configured from the profile: SQLite online store embedded, Redis in prod."""

    repo_dir: str
    feast_dir: str
    online_store: str = "sqlite"
    redis_url: str = "127.0.0.1:6379"
    redis_password_secret: str | None = None
    spark_remote: str | None = None
    stale_after_hours: float = 48.0
    lake_uri: str | None = None  # where the repository's data sources point (the profile's lake)

    def location(self) -> FeastLocation:
        return FeastLocation(Path(self.repo_dir), Path(self.feast_dir), self.online_store, self.redis_url,
                             self.redis_password_secret, self.spark_remote)

    def store(self) -> FeatureStore:
        return feature_store(self.location())

    def current_store(self) -> FeatureStore:
        """The store with `feature_repo/` applied: applied here if the registry is missing or out of date."""
        from loopwise.features.store import ensure_applied

        store = self.store()
        ensure_applied(store, Path(self.repo_dir), self.lake_uri)
        return store
