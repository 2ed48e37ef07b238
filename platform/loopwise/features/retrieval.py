"""Online features for serving: a batch of entities in one round trip, typed, with a status per value.

An entity the store has never seen gets nulls with status `missing`, never an exception; a value
older than the profile's `features.stale_after_hours` is returned with status `stale`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feast import FeatureStore


class Status(StrEnum):
    PRESENT = "present"
    MISSING = "missing"
    STALE = "stale"


@dataclass(frozen=True)
class FeatureValue:
    value: int | float | str | bool | None
    status: Status


@dataclass(frozen=True)
class EntityFeatures:
    """One entity's online features, by name."""

    key: dict[str, Any]
    values: dict[str, FeatureValue]

    def as_dict(self) -> dict[str, Any]:
        return {name: v.value for name, v in self.values.items()}

    @property
    def complete(self) -> bool:
        return all(v.status == Status.PRESENT for v in self.values.values())


def online_features(store: FeatureStore, service: str, entity_rows: list[dict[str, Any]], stale_after: timedelta,
                    now: datetime | None = None) -> list[EntityFeatures]:
    """Read a feature service's online values for many entities (their join keys) in one call."""
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

    if not entity_rows:
        return []
    response = store.get_online_features(features=store.get_feature_service(service), entity_rows=entity_rows)
    proto = response.proto
    names = list(proto.metadata.feature_names.val)
    keys = set(entity_rows[0])
    now = now or datetime.now(UTC)
    out = []
    for row, entity in enumerate(entity_rows):
        values: dict[str, FeatureValue] = {}
        for column, name in enumerate(names):
            if name in keys:
                continue
            result = proto.results[column]
            raw, status = result.values[row], result.statuses[row]
            kind = raw.WhichOneof("val")
            value = getattr(raw, kind) if kind and kind != "null_val" else None
            if status != FieldStatus.PRESENT:
                values[name] = FeatureValue(None, Status.MISSING)
                continue
            event_time = datetime.fromtimestamp(result.event_timestamps[row].seconds, tz=UTC)
            values[name] = FeatureValue(value, Status.STALE if now - event_time > stale_after else Status.PRESENT)
        out.append(EntityFeatures(dict(entity), values))
    return out
