"""The model versions a service answers with, loaded from MLflow and warmed, scored in micro-batches on their
online features and request-time inputs. Which versions answer, and with what share, is the model's traffic
split in the central state store (see `loopwise.rollout`)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from loopwise.features.retrieval import EntityFeatures, Status
from loopwise.registry import CHALLENGER, CHAMPION
from loopwise.training.data import InputLayout, matrix_of
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
    direct: Any = None  # the python model of a Loopwise-trained version, scored without pandas (`score_instances`)

    def columns(self, instances: list[dict[str, Any]], features: list[EntityFeatures]) -> dict[str, Any]:
        """The model's input columns: each instance's request-time inputs over its features, numeric columns as
        float64 (a null is NaN), a column with no value at all as NaN."""
        numeric = {*self.layout.features, *self.layout.numeric}
        data: dict[str, Any] = {}
        for column in self.layout.columns:
            values, seen = [], False
            for inst, feats in zip(instances, features, strict=True):
                if column in inst:
                    values.append(inst[column])
                elif column in feats.values:
                    values.append(feats.values[column].value)
                else:
                    values.append(None)
                    continue
                seen = True
            data[column] = (np.array(values, dtype="float64") if column in numeric
                            else values if seen else np.full(len(values), np.nan))
        return data

    def frame(self, instances: list[dict[str, Any]], features: list[EntityFeatures]) -> pd.DataFrame:
        """The model's input frame (`columns`): built column by column, 4x faster than from row dicts."""
        return pd.DataFrame(self.columns(instances, features), columns=self.layout.columns)

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.model.predict(frame), dtype=float).reshape(-1)

    def score_instances(self, instances: list[dict[str, Any]], features: list[EntityFeatures]) -> np.ndarray:
        """Score instances on their features: one call of the model for all of them (a micro-batch).

        A version Loopwise trained is scored from the columns as arrays, the same matrix and model as its pyfunc
        computes, without the frame or MLflow's wrapper: 0.17-0.20 ms of CPU a micro-batch of 1-8 rows against
        2.0-2.4 ms through the pyfunc, measured side by side in-process (1.75 ms on a quiet machine), a cost every
        micro-batch pays whatever its rows. Any other pyfunc is called on the frame."""
        if self.direct is None:
            return self.score(self.frame(instances, features))
        from loopwise.training.pipeline import score_matrix  # torch and the training code: loaded with the model

        columns = self.columns(instances, features)
        text = self.layout.text
        texts = [_text(v) for v in columns[text]] if text else None
        matrix = matrix_of(columns, self.layout, len(instances))
        return np.asarray(score_matrix(self.direct, matrix, texts), dtype=float).reshape(-1)


def _text(value: Any) -> str:
    """A text input as the pyfunc reads it (pandas' `fillna("").astype(str)`): a null is empty."""
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _scored_directly(python_model: Any) -> Any:
    """The python model when Loopwise's training logged it (a `ScoringModel` and its layout), else None."""
    from loopwise.training.model import ScoringModel

    return python_model if isinstance(getattr(python_model, "model", None), ScoringModel) else None


def load_version(tracking_uri: str, spec: ModelSpec, version: str, arm: str, join_keys: list[str]) -> LoadedVersion:
    """Load a registered version's pyfunc and its input layout, and warm it with one scoring."""
    import mlflow

    # Both URIs explicitly: `models:/` resolves through the registry URI, which an inherited
    # MLFLOW_REGISTRY_URI (MLflow exports it to child processes) would otherwise point elsewhere.
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{spec.name}/{version}")
    python_model = model.unwrap_python_model()
    layout = getattr(python_model, "layout", None)
    if not isinstance(layout, InputLayout):
        raise ModelNotReady(f"{spec.name}/{version} was not logged by Loopwise's training (no input layout)")
    loaded = LoadedVersion(spec, version, arm, model, layout, join_keys, direct=_scored_directly(python_model))
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


@dataclass(frozen=True)
class Scored:
    """What a micro-batch gave one request: its instances' features, and their scores or the scoring's error."""

    features: list[EntityFeatures]
    scores: np.ndarray | None
    error: BaseException | None = None


class Batcher:
    """Dynamic micro-batching for one version: requests queue while the model is busy; then one scoring (one call
    of the model) serves every request that queued. Their features come read (`SharedRead`: one read per model).

    A batch is what queued while the slots were busy, with no further wait (the wait for others is `SharedRead`'s),
    at most `max_rows` instances (a request is never split). Scoring runs in a thread so the event loop keeps accepting
    requests; up to `slots` micro-batches score at once (see `scoring_slots`), the next forming while they are busy.
    A failed scoring is each request's `Scored.error`.
    """

    def __init__(self, score: Callable[[list[dict[str, Any]], list[EntityFeatures]], np.ndarray], max_rows: int,
                 slots: int = 1) -> None:
        self.score, self.max_rows = score, max_rows
        self.queue: asyncio.Queue[_Queued] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.slots = asyncio.Semaphore(slots)
        self.scoring: set[asyncio.Task[None]] = set()  # micro-batches in flight (a reference keeps each alive)

    async def submit(self, instances: list[dict[str, Any]], features: list[EntityFeatures]) -> Scored:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._run())
        queued = _Queued(instances, features, loop.create_future())
        await self.queue.put(queued)
        return await queued.future

    async def _run(self) -> None:
        while True:
            await self.slots.acquire()  # a batch forms once a slot is free: it takes everything that queued meanwhile
            try:
                batch: list[_Queued] = await _collect(self.queue, self.max_rows, 0.0)
            except BaseException:
                self.slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._serve_in_slot(batch))
            self.scoring.add(task)
            task.add_done_callback(self.scoring.discard)

    async def _serve_in_slot(self, batch: list[_Queued]) -> None:
        try:
            await self._serve(batch)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, the batcher goes on
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
        finally:
            self.slots.release()

    async def _serve(self, batch: list[_Queued]) -> None:
        instances = [inst for item in batch for inst in item.instances]
        features = [f for item in batch for f in item.features]
        try:
            scores = await asyncio.to_thread(self.score, instances, features)
            if len(scores) != len(instances):
                raise ValueError(f"the model returned {len(scores)} scores for {len(instances)} instances")
        except Exception as exc:  # noqa: BLE001 - each request learns its scoring failed, with its features
            for item in batch:
                if not item.future.done():
                    item.future.set_result(Scored(item.features, None, exc))
            return
        start = 0
        for item in batch:
            if not item.future.done():
                item.future.set_result(Scored(item.features, scores[start:start + len(item.instances)]))
            start += len(item.instances)


async def _collect(queue: asyncio.Queue[Any], max_rows: int, wait: float) -> list[Any]:
    """The next micro-batch: the first item to come, then whatever comes within `wait` seconds of its arrival (all
    that has queued, with no wait, when `wait` is 0), up to `max_rows` instances (an item is never split)."""
    batch = [await queue.get()]
    rows = len(batch[0].instances)
    deadline = batch[0].arrived + wait  # from its arrival: what queued during the last batch's work waits no more
    while rows < max_rows:
        timeout = deadline - time.monotonic()
        if timeout <= 0 and queue.empty():
            break
        try:
            item = queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(queue.get(), timeout)
        except (TimeoutError, asyncio.QueueEmpty):
            break
        batch.append(item)
        rows += len(item.instances)
    return batch


class SharedRead:
    """One online read for the requests of every version of a model that come within `wait_ms` of each other.

    In a split (a canary, an A/B test) each version scores its own micro-batches; reading per model instead of per
    version keeps one read per wave of requests, as a model served alone has. The reads are made one at a time
    (the requests that come meanwhile are the next wave). When a wave's read fails, each of its requests is read
    alone, so that one request's bad key fails only that request, with its own error.
    """

    def __init__(self, read: Callable[[list[dict[str, Any]]], Awaitable[list[EntityFeatures]]], join_keys: list[str],
                 max_rows: int, wait_ms: float) -> None:
        self.read, self.join_keys, self.max_rows, self.wait = read, join_keys, max_rows, wait_ms / 1000
        self.queue: asyncio.Queue[_Reading] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def features(self, instances: list[dict[str, Any]]) -> list[EntityFeatures]:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._run())
        reading = _Reading(instances, loop.create_future())
        await self.queue.put(reading)
        return await reading.future

    async def _run(self) -> None:
        while True:
            batch: list[_Reading] = []
            try:
                batch = await _collect(self.queue, self.max_rows, self.wait)
                if not await self._answer(batch, give_up=len(batch) == 1):
                    for item in batch:  # which request was it? each is read alone and gets its own answer
                        await self._answer([item], give_up=True)
            except BaseException as exc:  # the task ends (shutdown): no request taken off the queue is left waiting
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
                raise

    async def _answer(self, batch: list[_Reading], give_up: bool) -> bool:
        """Read the batch's entities at once and answer each request with its own slice. If the read fails: with
        `give_up` every request gets its error, else no request is answered; False then."""
        rows = [{k: i[k] for k in self.join_keys} for item in batch for i in item.instances]
        try:
            found = await self.read(rows)
            if len(found) != len(rows):
                raise RuntimeError(f"the online read returned {len(found)} rows for {len(rows)} entities")
        except Exception as exc:  # noqa: BLE001 - the requests hear of it (below, or when read alone)
            if not give_up:
                return False
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return True
        start = 0
        for item in batch:
            if not item.future.done():
                item.future.set_result(found[start:start + len(item.instances)])
            start += len(item.instances)
        return True


@dataclass
class _Reading:
    instances: list[dict[str, Any]]
    future: asyncio.Future[list[EntityFeatures]]
    arrived: float = field(default_factory=time.monotonic)


def scoring_slots(micro_batching: bool, workers: int) -> int:
    """How many micro-batches of one version may score at once in a worker: enough to keep every core busy.

    An ONNX runtime scores on its own threads (one: `ScoringRuntime.threads`), so one micro-batch at a time leaves
    a core idle while its answers are logged and sent, and on a shared machine gets one thread's share of the
    cores. PyTorch (the `torch` runtime) spreads one scoring over every core already. Without micro-batching a
    version scores one request at a time (the benchmarks' baseline).
    """
    from loopwise.training.runtime import scoring_runtime

    runtime = scoring_runtime()
    if not micro_batching or runtime.name == "torch":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // (max(1, runtime.threads) * workers))


@dataclass
class _Queued:
    instances: list[dict[str, Any]]
    features: list[EntityFeatures]
    future: asyncio.Future[Scored]
    arrived: float = field(default_factory=time.monotonic)


def feature_statuses(features: EntityFeatures) -> dict[str, str]:
    return {name: value.status.value for name, value in features.values.items()}


def missing_count(features: EntityFeatures) -> int:
    return sum(1 for v in features.values.values() if v.status == Status.MISSING)
