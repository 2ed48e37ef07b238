"""Lineage of a model version: feature service, training-set and input Delta versions, the raw
partitions it came from and the Dagster runs that made each step."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date

from loopwise.contracts import SOURCES
from loopwise.events.store import EventStore
from loopwise.lake.tables import Lake


@dataclass
class Step:
    asset: str
    detail: str
    runs: list[str] = field(default_factory=list)


@dataclass
class Lineage:
    model: str
    version: str
    steps: list[Step]


def resolve(client: object, ref: str) -> tuple[str, str]:
    """`name@alias` or `name/version` to (name, version)."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)  # type: ignore[attr-defined]
    if "/" in ref:
        name, version = ref.rsplit("/", 1)
        return name, version
    raise ValueError(f"{ref!r}: use MODEL@ALIAS (ticket-escalation@champion) or MODEL/VERSION (ticket-escalation/3)")


def _runs(store: EventStore, asset: str, days: set[str]) -> list[str]:
    runs = {r.payload.get("run_id") for r in store.read(kind="asset.materialized", subject=f"asset:{asset}")
            if r.payload.get("partition") in days or (not days and r.payload.get("partition") is None)}
    return sorted(r for r in runs if r)


def model_lineage(tracking_uri: str, store: EventStore, lake: Lake, ref: str) -> Lineage:
    """Walk from a registered version back to the raw partitions it was trained on."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri, tracking_uri)
    name, version = resolve(client, ref)
    mv = client.get_model_version(name, version)
    tags = client.get_run(mv.run_id).data.tags
    start, _, end = tags.get("lineage.partitions", "..").partition("..")
    days = {date.fromordinal(o).isoformat() for o in range(date.fromisoformat(start).toordinal(),
                                                            date.fromisoformat(end).toordinal() + 1)} if start else set()
    inputs = json.loads(tags.get("lineage.inputs") or "{}")
    steps = [
        Step(f"model {name}/{version}", f"MLflow run {mv.run_id}, git commit {tags.get('git_commit', '?')[:12]}",
             [tags.get("dagster.run_id", "")]),
        Step("feature service", tags.get("lineage.feature_service", "?")),
        Step("training_set", f"Delta version {tags.get('lineage.training_set_version', '?')}",
             [tags.get("dagster.training_set_run_id", "")]),
    ]
    for table, table_version in sorted(inputs.items()):
        steps.append(Step(table, f"Delta version {table_version}", _runs(store, table, days)))
    # Tables upstream of the training set's inputs (silver_orders feeds the order features).
    for stage in ("silver", "bronze", "raw"):
        for source in SOURCES:
            table = lake.table(f"{stage}_{source}")
            if table.name in inputs:
                continue
            steps.append(Step(table.name, f"Delta version {table.current_version()} (at lineage time), "
                                          f"partitions {start}..{end}", _runs(store, table.name, days)))
    return Lineage(name, version, steps)
