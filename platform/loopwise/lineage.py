"""Lineage of a model version, built from what was recorded: the MLflow run's tags, then every Delta
write in the audit trail with the versions it read, back to the raw partitions and landing files.

A table at version v is the sum of the writes up to v that no later write (up to v) replaced, so
the walk follows exactly those writes and what each of them read; later writes change nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date

from loopwise.events.store import EventStore, Record

MATERIALIZED = "asset.materialized"


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

    def tables(self) -> list[str]:
        return [s.asset for s in self.steps]


def resolve(client: object, ref: str) -> tuple[str, str]:
    """`name@alias` or `name/version` to (name, version)."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)  # type: ignore[attr-defined]
    if "/" in ref:
        name, version = ref.rsplit("/", 1)
        return name, version
    raise ValueError(f"{ref!r}: use MODEL@ALIAS (e.g. my-model@champion) or MODEL/VERSION (e.g. my-model/3)")


def days_of(partitions: str | None) -> set[date]:
    """The days of a write's partitions: '2026-03-02' or '2026-03-02..2026-03-05'."""
    if not partitions:
        return set()
    start, _, end = partitions.partition("..")
    first, last = date.fromisoformat(start), date.fromisoformat(end or start)
    return {date.fromordinal(o) for o in range(first.toordinal(), last.toordinal() + 1)}


@dataclass(frozen=True)
class Write:
    """One recorded write of a table: its version, partitions, what it read, which run made it."""

    table: str
    version: int
    partitions: str
    inputs: dict[str, int]
    run_id: str
    files: str = ""


def recorded_writes(store: EventStore) -> dict[str, list[Write]]:
    """Every Delta write the audit trail holds, per table, newest version first."""
    writes: dict[str, list[Write]] = {}
    for record in store.read(kind=MATERIALIZED):
        write = _write(record)
        if write is not None:
            writes.setdefault(write.table, []).append(write)
    for table in writes.values():
        table.sort(key=lambda w: -w.version)
    return writes


def _write(record: Record) -> Write | None:
    metadata = record.payload.get("metadata", {})
    table, version = metadata.get("delta_table"), metadata.get("delta_version")
    if table is None or version is None:
        return None
    inputs = metadata.get("input_versions") or {}
    if isinstance(inputs, str):
        inputs = json.loads(inputs)
    return Write(table, int(version), str(metadata.get("partitions") or ""), {k: int(v) for k, v in inputs.items()},
                 record.payload.get("run_id", ""), str(metadata.get("landing_files") or ""))


def live_writes(writes: list[Write], version: int) -> list[Write]:
    """The writes (newest first) whose partitions still make up the table at `version`."""
    covered: set[date] = set()
    live = []
    for write in writes:
        if write.version > version:
            continue
        days = days_of(write.partitions)
        if days - covered or not days:
            live.append(write)
        covered |= days
    return live


def model_lineage(tracking_uri: str, store: EventStore, ref: str) -> Lineage:
    """Walk from a registered version back to the raw partitions (and landing files) it was trained on."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri, tracking_uri)
    name, version = resolve(client, ref)
    mv = client.get_model_version(name, version)
    tags = client.get_run(mv.run_id).data.tags
    training_table = tags.get("lineage.training_table", "training_set")
    steps = [
        Step(f"model {name}/{version}", f"MLflow run {mv.run_id}, git commit {tags.get('git_commit', '?')[:12]}",
             [tags.get("dagster.run_id", "")]),
        Step("feature service", tags.get("lineage.feature_service", "?")),
        Step(training_table, f"Delta version {tags.get('lineage.training_set_version', '?')}, "
                             f"partitions {tags.get('lineage.partitions', '?')}",
             [tags.get("dagster.training_set_run_id", "")]),
    ]
    writes = recorded_writes(store)
    queue = sorted(json.loads(tags.get("lineage.inputs") or "{}").items())
    seen: set[tuple[str, int]] = set()
    while queue:
        table, table_version = queue.pop(0)
        if (table, table_version) in seen:
            continue
        seen.add((table, table_version))
        live = live_writes(writes.get(table, []), table_version)
        if not live:
            steps.append(Step(table, f"Delta version {table_version} (no recorded write: its runs predate the trail)"))
            continue
        partitions = sorted(d for w in live for d in days_of(w.partitions))
        span = f"{partitions[0]}..{partitions[-1]}" if partitions else "-"
        files = sum(len(w.files.split()) for w in live)
        detail = (f"Delta version {table_version}, partitions {span}, written by versions "
                  f"{', '.join(str(w.version) for w in sorted(live, key=lambda w: w.version))}"
                  + (f", from {files} landing files" if files else ""))
        steps.append(Step(table, detail, sorted({w.run_id for w in live if w.run_id})))
        for write in live:
            queue.extend(sorted(write.inputs.items()))
    return Lineage(name, version, steps)
