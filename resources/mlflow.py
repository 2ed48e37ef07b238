"""MLflow tracking and the model registry (a Pythonic resource; dagster-mlflow's is a legacy one)."""

from __future__ import annotations

from typing import Any

import dagster as dg
from loopwise.events import EventStore
from loopwise.registry import GatePolicy, Registry


class MlflowResource(dg.ConfigurableResource):
    """SQLite and local artifacts under the data root embedded; a tracking server and S3 in prod."""

    tracking_uri: str
    artifact_uri: str
    gates: dict[str, dict[str, Any]] = {}  # per declared model: floors, ceilings, tolerance

    def registry(self, model: str, events: EventStore) -> Registry:
        return Registry(self.tracking_uri, events, model)

    def policy(self, model: str) -> GatePolicy:
        gate = self.gates.get(model)
        if gate is None:
            raise KeyError(f"no gate configured for model {model!r}; gates: {sorted(self.gates)}")
        return GatePolicy(dict(gate["floors"]), dict(gate["ceilings"]), float(gate["tolerance"]))
