"""The one place a profile becomes backends: the lake, the event store, Feast, the registry, the gate.

The Dagster resources wrap these constructors (built by `resources.build_resources`) and the CLI
calls them directly, so every entry point opens the same backends with the same options (an S3
lake's storage options, a PostgreSQL password secret, a Redis online store).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from loopwise import usecase
from loopwise.config import Settings
from loopwise.lake.tables import Lake

if TYPE_CHECKING:
    from feast import FeatureStore

    from loopwise.events.store import EventStore
    from loopwise.features.retrieval import EntityFeatures
    from loopwise.registry import GatePolicy, Registry


@dataclass(frozen=True)
class Backends:
    settings: Settings

    @cached_property
    def use_case(self) -> usecase.UseCase:
        return usecase.load(self.settings.use_case)

    def lake(self) -> Lake:
        return Lake(self.settings.lake_uri, self.settings.lake.storage_options)

    def events(self) -> EventStore:
        from loopwise.events import open_for

        return open_for(self.settings)

    def feature_store(self) -> FeatureStore:
        from loopwise.features.store import feature_store

        return feature_store(self.settings, self.use_case.feature_repo)

    def online_features(self, service: str, entity_rows: list[dict[str, Any]]) -> list[EntityFeatures]:
        """A feature service's online values for these entities, stale after the profile's `features.stale_after_hours`."""
        from loopwise.features.retrieval import online_features

        stale_after = timedelta(hours=self.settings.features.stale_after_hours)
        return online_features(self.feature_store(), service, entity_rows, stale_after)

    def registry(self, model: str, events: EventStore | None = None) -> Registry:
        from loopwise.registry import Registry

        return Registry(self.settings.tracking_uri, events or self.events(), model)

    def gate(self, model: str) -> GatePolicy:
        from loopwise.registry import GatePolicy

        gate = self.settings.registry.gate(model)
        return GatePolicy(dict(gate.floors or {}), dict(gate.ceilings or {}), gate.tolerance or 0.0)
