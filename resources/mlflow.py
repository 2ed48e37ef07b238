"""MLflow tracking and the model registry (a Pythonic resource; dagster-mlflow's is a legacy one)."""

from __future__ import annotations

import dagster as dg
from loopwise.events import EventStore
from loopwise.registry import GatePolicy, Registry


class MlflowResource(dg.ConfigurableResource):
    """SQLite and local artifacts under the data root embedded; a tracking server and S3 in prod."""

    tracking_uri: str
    artifact_uri: str
    model_name: str = "ticket-escalation"
    floors: dict[str, float] = {}
    ceilings: dict[str, float] = {}
    tolerance: float = 0.01

    def registry(self, events: EventStore) -> Registry:
        return Registry(self.tracking_uri, events, self.model_name)

    def policy(self) -> GatePolicy:
        return GatePolicy(dict(self.floors), dict(self.ceilings), self.tolerance)
