"""Evidence for a rollout's analysis, from the prediction log: what each arm answered, how fast, how often it
failed, and (where outcomes have arrived) whether it was right.

Labels are joined through the model's split key, which each request carries (its `inputs`), with the model's
declared outcomes (a silver source and its label column), read as two Delta columns without Spark.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd

from loopwise.lake.tables import DateRange, Lake
from loopwise.rollout.analysis import ArmEvidence
from loopwise.rollout.state import Rollout, Strategy
from loopwise.usecase import ModelSpec

PREDICTIONS = "predictions"


def read_predictions(lake: Lake, model: str, since: datetime, until: datetime | None = None) -> pd.DataFrame:
    """The model's logged predictions from `since` (inclusive) on, oldest first (an empty frame if none)."""
    table = lake.table(PREDICTIONS)
    if not table.exists():
        return pd.DataFrame(columns=["request_id", "at", "model", "version", "arm", "inputs", "score", "latency_ms",
                                     "status", "served"])
    end = (until or datetime.now(UTC)).date()
    frame = table.read(predicate=DateRange(min(since.date(), end), max(since.date(), end))).to_pandas()
    frame = frame[(frame["model"] == model) & (frame["at"] >= pd.Timestamp(since))]
    if until is not None:
        frame = frame[frame["at"] < pd.Timestamp(until)]
    return frame.sort_values("at", kind="stable").reset_index(drop=True)


def read_outcomes(lake: Lake, spec: ModelSpec) -> pd.Series:
    """Known labels by split key (float 0/1); empty when the model declares no outcomes or none have landed."""
    if spec.outcomes is None:
        return pd.Series(dtype=float)
    from loopwise.pipelines.stages import silver_table

    table = silver_table(lake, spec.outcomes.source)
    if not table.exists():
        return pd.Series(dtype=float)
    data = table.delta().to_pyarrow_table(columns=[spec.split_key, spec.outcomes.label]).to_pandas()  # type: ignore[union-attr]
    data = data.dropna().drop_duplicates(spec.split_key, keep="last")
    return pd.Series(data[spec.outcomes.label].astype(float).to_numpy(), index=data[spec.split_key].astype(str))


def input_column(predictions: pd.DataFrame, name: str) -> pd.Series:
    """One request field per logged prediction (its `inputs` JSON), as text; NaN where absent."""
    return predictions["inputs"].map(lambda text: _field(text, name))


def _field(text: str, name: str) -> str | None:
    value = json.loads(text).get(name)
    return None if value is None else str(value)


def arm_evidence(predictions: pd.DataFrame, rollout: Rollout, outcomes: pd.Series | None = None, *,
                 split_key: str | None = None, entity_key: str | None = None) -> dict[str, ArmEvidence]:
    """Per arm of `rollout`, what its version did in `predictions` (already cut to the analysis window).

    A shadow arm's rows (never served) count like any other: it is the arm the analysis judges. Labels align
    with the answered requests (NaN until known); A/B outcomes are per entity (`entity_key`) in order of first
    exposure, an entity's outcome being its first labelled request's.
    """
    evidence = {}
    for arm in rollout.arms if rollout.arms else ():
        if arm.weight == 0 and rollout.strategy is not Strategy.SHADOW:
            # An arm the split gives nothing (the champion at a canary's 100 % step): a few answers from workers
            # still on the previous split are not a sample to compare with.
            evidence[arm.name] = ArmEvidence(requests=0)
            continue
        rows = predictions[(predictions["arm"] == arm.name) & (predictions["version"] == arm.version)]
        ok = rows[rows["status"].fillna("ok") == "ok"]
        labels = None
        if outcomes is not None and split_key is not None and len(outcomes):
            labels = input_column(ok, split_key).map(outcomes).to_numpy(dtype=float)
        evidence[arm.name] = ArmEvidence(
            requests=len(rows), errors=int((rows["status"] == "error").sum()),
            latencies_ms=ok["latency_ms"].to_numpy(dtype=float), scores=ok["score"].to_numpy(dtype=float),
            labels=labels, outcomes=_entity_outcomes(ok, labels, entity_key) if rollout.plan else None)
    for name in ("champion", "challenger"):  # a finished rollout has one arm: the other has no evidence
        evidence.setdefault(name, ArmEvidence(requests=0))
    return evidence


def _entity_outcomes(rows: pd.DataFrame, labels: np.ndarray | None, entity_key: str | None) -> np.ndarray:
    if labels is None or entity_key is None or not len(rows):
        return np.empty(0)
    frame = pd.DataFrame({"entity": input_column(rows, entity_key).to_numpy(), "label": labels})
    frame = frame.dropna().drop_duplicates("entity", keep="first")
    return frame["label"].to_numpy(dtype=float)


def window_start(started_at: str | datetime) -> datetime:
    """A timestamp of the state store (ISO text) as an aware datetime."""
    if isinstance(started_at, datetime):
        return started_at if started_at.tzinfo else started_at.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(started_at)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def today() -> date:
    return datetime.now(UTC).date()
