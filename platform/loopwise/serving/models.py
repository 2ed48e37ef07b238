"""The model versions a service answers with, loaded from MLflow and warmed, scored in micro-batches on their
online features and request-time inputs. Which versions answer, and with what share, is the model's traffic
split in the central state store (see `loopwise.rollout`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from loopwise.features.retrieval import EntityFeatures, Status
from loopwise.registry import CHALLENGER, CHAMPION
from loopwise.training.data import InputLayout
from loopwise.usecase import ModelSpec

log = logging.getLogger(__name__)


class ModelNotReady(RuntimeError):
    """A declared model has no version to serve yet; the message says what to materialize."""


@dataclass
class LoadedVersion:
    """One version of one model, loaded and warmed: what it needs and how it scores."""

    spec: ModelSpec
    version: str
    arm: str
    model: Any  # an mlflow.pyfunc.PyFuncModel
    layout: InputLayout
    join_keys: list[str]
    loaded_at: float = field(default_factory=time.time)

    def frame(self, instances: list[dict[str, Any]], features: list[EntityFeatures]) -> pd.DataFrame:
        rows = [{**{k: v.value for k, v in f.values.items()}, **inst} for inst, f in zip(instances, features, strict=True)]
        frame = pd.DataFrame(rows).reindex(columns=self.layout.columns)
        numeric = [*self.layout.features, *self.layout.numeric]
        return frame.astype({c: "float64" for c in numeric})

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.model.predict(frame), dtype=float).reshape(-1)


def load_version(tracking_uri: str, spec: ModelSpec, version: str, arm: str, join_keys: list[str]) -> LoadedVersion:
    """Load a registered version's pyfunc and its input layout, and warm it with one scoring."""
    import mlflow

    # Both URIs explicitly: `models:/` resolves through the registry URI, which an inherited
    # MLFLOW_REGISTRY_URI (MLflow exports it to child processes) would otherwise point elsewhere.
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{spec.name}/{version}")
    layout = getattr(model.unwrap_python_model(), "layout", None)
    if not isinstance(layout, InputLayout):
        raise ModelNotReady(f"{spec.name}/{version} was not logged by Loopwise's training (no input layout)")
    loaded = LoadedVersion(spec, version, arm, model, layout, join_keys)
    warm = pd.DataFrame([{c: None for c in layout.columns}]).astype(
        {c: "float64" for c in (*layout.features, *layout.numeric)})
    if layout.text:
        warm[layout.text] = "warm up"
    for column, levels in layout.categorical.items():
        warm[column] = levels[0]
    loaded.score(warm)
    return loaded


def join_keys_of(store: Any, service: str) -> list[str]:
    """The entity join keys a feature service needs (what each request must carry)."""
    keys: list[str] = []
    for projection in store.get_feature_service(service).feature_view_projections:
        for entity in store.get_feature_view(projection.name).entity_columns:
            if entity.name not in keys:
                keys.append(entity.name)
    return keys


def resolve_version(tracking_uri: str, spec: ModelSpec) -> tuple[str, str]:
    """The version and arm a model with no rollout serves: its champion, else its challenger."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri, tracking_uri)
    for alias in (CHAMPION, CHALLENGER):
        try:
            return str(client.get_model_version_by_alias(spec.name, alias).version), alias
        except MlflowException:
            continue
    raise ModelNotReady(f"{spec.name} has no champion or challenger yet: materialize "
                        f"{spec.slug}/registered_model (or run `loopwise demo`)")


class Batcher:
    """Dynamic micro-batching: requests queue while the model is busy; one scoring serves them all.

    The wait for a batch to fill is bounded by `wait_ms`, and a batch holds at most `max_rows`.
    Scoring runs in a thread so the event loop keeps accepting requests meanwhile.
    """

    def __init__(self, score: Callable[[pd.DataFrame], np.ndarray], max_rows: int, wait_ms: float) -> None:
        self.score, self.max_rows, self.wait = score, max_rows, wait_ms / 1000
        self.queue: asyncio.Queue[tuple[pd.DataFrame, asyncio.Future[np.ndarray]]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def submit(self, frame: pd.DataFrame) -> np.ndarray:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self.queue.put((frame, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            rows = len(batch[0][0])
            deadline = time.monotonic() + self.wait
            while rows < self.max_rows:
                timeout = deadline - time.monotonic()
                if timeout <= 0 and self.queue.empty():
                    break
                try:
                    item = self.queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self.queue.get(), timeout)
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                batch.append(item)
                rows += len(item[0])
            frames = [f for f, _ in batch]
            try:
                scores = await asyncio.to_thread(self.score, pd.concat(frames, ignore_index=True))
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for frame, future in batch:
                if not future.done():
                    future.set_result(scores[start:start + len(frame)])
                start += len(frame)


def feature_statuses(features: EntityFeatures) -> dict[str, str]:
    return {name: value.status.value for name, value in features.values.items()}


def missing_count(features: EntityFeatures) -> int:
    return sum(1 for v in features.values.values() if v.status == Status.MISSING)
