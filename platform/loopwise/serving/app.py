"""The serving app: every declared model on the KServe v1 protocol, with health, readiness and metrics.

`POST /v1/models/{name}:predict` takes `{"instances": [...]}` (each instance the model's declared
request schema: its entity keys and request-time inputs) and returns `{"predictions": [...]}`, each
with the score, the version and arm that answered, the features' statuses and a request id. Every
answer is in the prediction log before the response leaves. Features are read from the online store
in-process, once for the requests of a model that come together (whatever version answers them); each
version scores its requests in micro-batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field, create_model

from loopwise import rollout
from loopwise.backends import Backends
from loopwise.rollout import ArmShare, Route, Router, Traffic
from loopwise.serving import metrics
from loopwise.serving.auth import Authenticator, Identity, for_predictions, require
from loopwise.serving.feature_server import OnlineReader, Refused
from loopwise.serving.models import (
    Batcher,
    LoadedVersion,
    Scored,
    SharedRead,
    feature_statuses,
    join_keys_of,
    load_version,
    missing_count,
    resolve_version,
    scoring_slots,
)
from loopwise.usecase import ModelSpec

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0  # how soon every worker follows a change of a traffic split
ALIAS_POLL_SECONDS = 10.0  # how often a model with no rollout re-reads its MLflow aliases
Caller = Annotated[Identity, for_predictions()]  # anyone, or a viewer when serving.auth.require_key_for_predictions
Operator = Annotated[Identity, require("operator")]


class Prediction(BaseModel):
    """One answered instance."""

    score: float = Field(description="the model's probability for the instance")
    model: str
    version: str
    arm: str = Field(description="which arm of the traffic split answered (champion, challenger, ...)")
    request_id: str = Field(description="the id this answer is logged under in the prediction log")
    feature_statuses: dict[str, str] = Field(description="present, missing or stale, per feature")
    missing_features: int


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class ManualAction(BaseModel):
    reason: str = Field(min_length=1, max_length=2000, description="why: recorded in the audit trail with who")


class ModelMetadata(BaseModel):
    name: str
    ready: bool
    versions: list[dict[str, Any]]
    traffic: dict[str, float] = Field(description="share of requests per arm")
    strategy: str | None = Field(None, description="the running rollout's strategy (canary, bluegreen, shadow, ab)")
    rollout_id: str | None = None
    inputs: list[str]
    feature_service: str


class Service:
    """The state one worker process serves from: loaded versions, each model's router, the prediction log.

    Which versions answer is the model's traffic split in the central state store (its rollout); a model that
    never had one answers with its `champion` alias (or `challenger` where no champion exists yet). Every
    version a split names is loaded and warmed before the split is used; the versions of the split before stay
    loaded, so a rollback takes effect at once.
    """

    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.settings = backends.settings
        self.specs = {spec.name: spec for spec in backends.use_case.models}
        self.versions: dict[tuple[str, str], LoadedVersion] = {}
        self.batchers: dict[tuple[str, str], Batcher] = {}
        self.reads: dict[str, SharedRead] = {}  # per model: one read for the requests of all its versions
        self.routers: dict[str, Router] = {}
        self.join_keys: dict[str, list[str]] = {}
        self.errors: dict[str, str] = {}
        self.store: Any = None
        # One read of the online store for `/get-online-features` and the predict routes (`SharedRead` per model).
        self.features = OnlineReader(lambda: self.store or backends.feature_store())
        self.events = backends.events()
        self.predlog: Any = None
        self._alias_checked: dict[str, float] = {}

    def split(self, name: str) -> Traffic:
        """The model's split now: its rollout's, else its alias (checked every ALIAS_POLL_SECONDS)."""
        split = rollout.traffic(self.events, name)
        if split:
            return split
        router = self.routers.get(name)
        if router is not None and router.strategy is None and \
                time.monotonic() - self._alias_checked.get(name, 0.0) < ALIAS_POLL_SECONDS:
            return router.traffic
        self._alias_checked[name] = time.monotonic()
        version, alias = resolve_version(self.settings.tracking_uri, self.specs[name])
        return Traffic({alias: ArmShare(version, 1.0)})

    def sync(self, name: str) -> None:
        """Follow the model's split: load what it names, then route by it; keep the old routing on failure."""
        try:
            split = self.split(name)
            router = self.routers.get(name)
            if router is not None and dict(router.traffic) == dict(split) and \
                    (router.traffic.rollout_id, router.traffic.revision) == (split.rollout_id, split.revision):
                return
            if name not in self.join_keys:
                self.join_keys[name] = join_keys_of(self.store, self.specs[name].feature_service)
            for arm, share in split.items():
                self._load(name, share.version, arm)
            new = Router(split)
        except Exception as exc:  # noqa: BLE001 - a model that cannot load is reported by /readyz, not fatal
            self.errors[name] = str(exc)
            log.warning("model %s not loaded: %s", name, exc)
            return
        old = self.routers.get(name)
        self.routers[name] = new
        self.errors.pop(name, None)
        keep = {v for v in new.versions} | (set(old.versions) if old else set())
        for key in [k for k in self.versions if k[0] == name and k[1] not in keep]:
            self.versions.pop(key)
            self.batchers.pop(key, None)
        log.info("serving %s: %s", name, ", ".join(f"{a} v{s.version} {s.weight:.0%}" for a, s in split.items()))

    def _load(self, name: str, version: str, arm: str) -> LoadedVersion:
        key = (name, version)
        if key not in self.versions:
            spec = self.specs[name]
            loaded = load_version(self.settings.tracking_uri, spec, version, arm, self.join_keys[name])
            serving = self.settings.serving
            max_rows = serving.max_batch if serving.micro_batching else 1
            if name not in self.reads:
                read = functools.partial(self.features.entity_features, spec.feature_service,
                                         stale_after=timedelta(hours=self.settings.features.stale_after_hours))
                self.reads[name] = SharedRead(read, self.join_keys[name], max_rows, serving.batch_wait_ms)
            # A version's requests come read (`SharedRead`); its micro-batch is what queued while its slots were busy.
            self.batchers[key] = Batcher(loaded.score_instances, max_rows,
                                         scoring_slots(serving.micro_batching, serving.workers))
            self.versions[key] = loaded
        return self.versions[key]

    def startup(self) -> None:
        from loopwise.features.store import ensure_applied

        self.store = self.backends.feature_store()
        ensure_applied(self.store, self.backends.use_case.feature_repo, self.settings.lake_uri)
        from loopwise.training.runtime import use_scoring_runtime

        runtime = use_scoring_runtime(self.settings.serving.runtime, self.settings.paths.root / "runtime")
        if runtime.name != "torch":
            import torch

            # The torch layers the ONNX runtime leaves (a tabular model, a text model's head) take its one thread
            # too. Measured with 2 cores shared (load 17): a 64-unit MLP on 4-16 rows cost 14 ms of CPU a call on
            # torch's default 2 threads (they spin-wait for a busy core), 1 ms on one; the scores are identical.
            # `torch` stays PyTorch as trained, threads and all: the benchmarks' baseline.
            torch.set_num_threads(runtime.threads)
            if os.environ.get("MKL_NUM_THREADS") != "1" or os.environ.get("OMP_NUM_THREADS") != "1":
                log.warning("OMP_NUM_THREADS/MKL_NUM_THREADS are not 1 (`loopwise serve` sets them, before torch "
                            "loads, unless they are set): MKL's second thread may spin a core in every scoring")
        for name in self.specs:
            self.sync(name)
        self.predlog = open_prediction_log(self.backends)

    def online_store_answers(self) -> str | None:
        try:
            self.store.list_feature_views()
        except Exception as exc:  # noqa: BLE001
            return str(exc)
        return None


def open_prediction_log(backends: Backends) -> Any:
    """The write-ahead prediction log of this process; what an earlier process left is flushed first."""
    from loopwise.serving.predlog import PredictionLog

    settings = backends.settings
    directory = settings.serving.log_dir or str(settings.paths.predlog)
    predlog = PredictionLog(directory=Path(directory), lake_table=backends.lake().table("predictions"),
                            group_commit_ms=settings.serving.group_commit_ms)
    predlog.start_flusher(settings.serving.flush_interval_seconds)  # recovers first: an earlier process's records land
    return predlog


def request_model(spec: ModelSpec, max_batch: int) -> type[BaseModel]:
    """The body of a model's predict route: `instances`, each the model's declared request schema."""
    instance = spec.request or create_model(f"{spec.slug}_instance", __base__=BaseModel)
    return create_model(f"{spec.slug}_predict_request",
                        instances=(list[instance], Field(min_length=1, max_length=max_batch)))  # type: ignore[valid-type]


def create_app(backends: Backends) -> FastAPI:
    """The app for one worker; `loopwise serve` runs it under uvicorn."""
    service = Service(backends)
    settings = backends.settings
    metrics.install_state_collector(service.events, list(service.specs), metrics.use_case_groups(backends.use_case))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(service.startup)
        poller = asyncio.get_running_loop().create_task(_poll_deployments(service))
        yield
        poller.cancel()
        if service.predlog is not None:
            await asyncio.to_thread(service.predlog.close)

    app = FastAPI(title="Loopwise serving", description=__doc__, version="1", lifespan=lifespan)
    app.state.service = service
    Authenticator(settings, service.events).install(app)

    @app.middleware("http")
    async def limit_and_measure(request: Request, call_next):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.serving.max_body_bytes):
            metrics.ERRORS.labels(cause="body_too_large").inc()
            return JSONResponse({"error": f"request body over {settings.serving.max_body_bytes} bytes "
                                          "(serving.max_body_bytes)"}, status_code=413)
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.REQUESTS.labels(route=path, status=str(response.status_code)).inc()
        metrics.LATENCY.labels(route=path).observe(time.perf_counter() - started)
        return response

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", tags=["health"], summary="Ready when every model is loaded and warmed and the online store answers")
    async def readyz() -> JSONResponse:
        problems = {name: service.errors.get(name, "loading") for name in service.specs if name not in service.routers}
        store_problem = service.online_store_answers() if service.store is not None else "starting"
        if store_problem:
            problems["online store"] = store_problem
        if problems:
            return JSONResponse({"ready": False, "problems": problems}, status_code=503)
        return JSONResponse({"ready": True, "models": {n: {a: s.version for a, s in r.traffic.items()}
                                                       for n, r in service.routers.items()}})

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prometheus() -> PlainTextResponse:
        body, content_type = await asyncio.to_thread(metrics.render)  # the state gauges read the store
        return PlainTextResponse(body, media_type=content_type)

    @app.get("/v1/models", tags=["predict"], summary="The declared models")
    async def models() -> dict[str, list[str]]:
        return {"models": list(service.specs)}

    @app.get("/v1/models/{name}", tags=["predict"], response_model=ModelMetadata,
             summary="A model's metadata: versions loaded and the traffic split")
    async def metadata(name: str) -> ModelMetadata:
        spec = _spec(service, name)
        router = service.routers.get(name)
        split = router.traffic if router else Traffic()
        versions = [{"version": v.version, "arm": next((a for a, s in split.items() if s.version == v.version), None),
                     "loaded_at": datetime.fromtimestamp(v.loaded_at, UTC).isoformat()}
                    for (model, _), v in service.versions.items() if model == name]
        return ModelMetadata(name=name, ready=router is not None, versions=versions,
                             traffic={arm: share.weight for arm, share in split.items()},
                             strategy=split.strategy.value if split.strategy else None, rollout_id=split.rollout_id,
                             inputs=spec.inputs, feature_service=spec.feature_service)

    @app.post("/v1/models/{name}:reload", tags=["admin"], response_model=ModelMetadata,
              summary="Follow the traffic split the state store names for this model now (operator role)")
    async def reload(name: str, caller: Operator) -> ModelMetadata:
        _spec(service, name)
        service._alias_checked.pop(name, None)
        await asyncio.to_thread(service.sync, name)
        if name in service.errors:
            raise HTTPException(409, f"{name} could not be loaded: {service.errors[name]}")
        log.info("%s reloaded by %s", name, caller.subject)
        return await metadata(name)

    @app.get("/v1/models/{name}/rollout", tags=["rollout"],
             summary="The model's rollout: state, arms, allowed moves and its latest decisions with their evidence")
    async def rollout_status(name: str, caller: Caller) -> dict[str, Any]:
        _spec(service, name)
        from loopwise.rollout.policy import describe

        return await asyncio.to_thread(describe, service.events, name)

    @app.post("/v1/models/{name}/rollout:{action}", tags=["rollout"],
              summary="Promote, roll back, pause, resume, abort or advance the rollout by hand (operator role)")
    async def rollout_action(name: str, action: str, body: ManualAction, caller: Operator) -> dict[str, Any]:
        _spec(service, name)
        from loopwise.rollout import IllegalMove, RolloutConflict
        from loopwise.rollout.policy import MANUAL, act, describe

        if action not in MANUAL:
            raise HTTPException(404, f"no rollout action {action!r}; actions: {', '.join(MANUAL)}")
        try:
            await asyncio.to_thread(act, service.events, service.backends.registry(name, service.events), name, action,
                                    actor=caller.subject, reason=body.reason)
        except (IllegalMove, RolloutConflict) as exc:
            raise HTTPException(409, str(exc)) from None
        await asyncio.to_thread(service.sync, name)
        return await asyncio.to_thread(describe, service.events, name)

    for spec in service.specs.values():
        _add_predict_route(app, service, spec)


    from loopwise.serving.feature_server import feature_router

    stale_after = timedelta(hours=settings.features.stale_after_hours)
    # Reads follow the prediction routes' rule; writes to the online store need the operator role.
    app.include_router(feature_router(service.features, stale_after, write_dependencies=[require("operator")]),
                       tags=["features"], dependencies=[for_predictions()])

    @app.post("/v1/models/{name}:predict", tags=["predict"], include_in_schema=False)
    async def unknown_model(name: str) -> None:
        _spec(service, name)  # always raises: a declared model has its own route above

    return app


def _spec(service: Service, name: str) -> ModelSpec:
    if name not in service.specs:
        raise HTTPException(404, f"no model {name!r}; models: {sorted(service.specs)}")
    return service.specs[name]


def _add_predict_route(app: FastAPI, service: Service, spec: ModelSpec) -> None:
    body_model = request_model(spec, service.settings.serving.max_batch)

    async def predict(body: body_model, caller: Caller) -> PredictResponse:  # type: ignore[valid-type]
        started, batch = time.perf_counter(), uuid.uuid4().hex
        router = service.routers.get(spec.name)
        if router is None:
            metrics.ERRORS.labels(cause="model_not_ready").inc()
            raise HTTPException(503, service.errors.get(spec.name) or f"{spec.name} is still loading")
        instances = [i.model_dump() for i in body.instances]  # type: ignore[attr-defined]
        join_keys = service.join_keys[spec.name]
        routes = [router.route(str(inst[join_keys[0]]) if router.sticky else None) for inst in instances]
        served = _groups([(r.arm, r.version) for r in routes])
        # The model's requests that come together are read at once; each version scores its own in one call.
        outcomes = await asyncio.gather(*(_score(service, spec.name, version, [instances[i] for i in idx])
                                          for (_, version), idx in served.items()), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Refused):  # the online store cannot be read (e.g. not materialized yet)
                metrics.ERRORS.labels(cause="online_store").inc()
                raise HTTPException(outcome.status, outcome.message)
            if isinstance(outcome, BaseException):  # the read failed otherwise: nothing was scored
                raise outcome
        features: list[Any] = [None] * len(instances)
        scores: list[float] = [float("nan")] * len(instances)
        latency: list[float] = [0.0] * len(instances)
        failed: list[tuple[str, str, BaseException]] = []
        for ((arm, version), idx), outcome in zip(served.items(), outcomes, strict=True):
            for i, feats in zip(idx, outcome.features, strict=True):
                features[i] = feats
            if outcome.error is not None:
                failed.append((arm, version, outcome.error))
                continue
            elapsed = (time.perf_counter() - started) * 1000
            for i, score in zip(idx, outcome.scores, strict=True):
                scores[i], latency[i] = float(score), elapsed
        shadows = _groups([s for r in routes for s in r.shadow], [i for i, r in enumerate(routes) for _ in r.shadow])
        if shadows:
            task = asyncio.get_running_loop().create_task(
                _log_shadows(service, spec, shadows, instances, features, started, batch))
            _background.add(task)
            task.add_done_callback(_background.discard)
        if failed:
            # The failing arms' instances are logged as errors (a rollout's error-rate evidence); the request fails.
            elapsed = (time.perf_counter() - started) * 1000
            bad = [(i, arm, version) for (arm, version, _) in failed for i in served[(arm, version)]]
            await _log(service, spec, [(i, arm, version, float("nan"), elapsed, "error", True) for i, arm, version in bad],
                       instances, features, batch)
            metrics.ERRORS.labels(cause="model_error").inc()
            arm, version, exc = failed[0]
            raise HTTPException(500, f"{spec.name} version {version} ({arm}) failed to score: {exc}") from exc
        return await _answer(service, spec, routes, instances, features, scores, latency, batch)

    # The body's schema is built per model at run time: give FastAPI the class, not the postponed annotation.
    predict.__annotations__.update(body=body_model, caller=Caller, return_=None)
    predict.__annotations__.pop("return_")
    app.post(f"/v1/models/{spec.name}:predict", tags=["predict"], response_model=PredictResponse,
             summary=f"Score {spec.name}", description=spec.description, name=f"predict_{spec.slug}")(predict)


_background: set[asyncio.Task[None]] = set()  # shadow scorings in flight (a reference keeps each alive)


def _groups(pairs: list[tuple[str, str]], positions: list[int] | None = None) -> dict[tuple[str, str], list[int]]:
    """Instance positions per (arm, version), in first-seen order."""
    groups: dict[tuple[str, str], list[int]] = {}
    for n, pair in enumerate(pairs):
        groups.setdefault(pair, []).append(n if positions is None else positions[n])
    return groups


async def _score(service: Service, model: str, version: str, instances: list[dict[str, Any]],
                 features: list[Any] | None = None) -> Scored:
    """Queue instances for their version's next micro-batch, read with the model's other requests unless given."""
    batcher = service.batchers[(model, version)]  # before the read: a changed split may unload the version meanwhile
    if features is None:
        features = await service.reads[model].features(instances)
    return await batcher.submit(instances, features)


async def _log_shadows(service: Service, spec: ModelSpec, shadows: dict[tuple[str, str], list[int]],
                       instances: list[dict[str, Any]], features: list[Any], started: float, batch: str) -> None:
    """Score the shadow arms on the same requests and log their scores (never served); failures are logged."""
    records = []
    for (arm, version), idx in shadows.items():
        scored = None
        try:
            scored = await _score(service, spec.name, version, [instances[i] for i in idx], [features[i] for i in idx])
        except Exception:  # noqa: BLE001, S110 - a failing shadow never touches the answer; it is evidence
            pass
        elapsed = (time.perf_counter() - started) * 1000
        if scored is None or scored.scores is None:
            records += [(i, arm, version, float("nan"), elapsed, "error", False) for i in idx]
        else:
            records += [(i, arm, version, float(s), elapsed, "ok", False) for i, s in zip(idx, scored.scores, strict=True)]
    try:
        await _log(service, spec, records, instances, features, batch)
    except Exception as exc:  # noqa: BLE001
        log.warning("shadow scores of %s not logged: %s", spec.name, exc)


async def _log(service: Service, spec: ModelSpec, rows: list[tuple[int, str, str, float, float, str, bool]],
               instances: list[dict[str, Any]], features: list[Any], batch: str) -> list[str]:
    """Append (position, arm, version, score, latency_ms, status, served) rows; durable when it returns.

    A request's id is `<batch>-<position>`; a shadow arm's score of it is logged as `<id>-shadow-<arm>`.
    """
    from loopwise.serving.predlog import Prediction as LoggedPrediction

    now = datetime.now(UTC)
    records = [LoggedPrediction(
        request_id=f"{batch}-{i}" + ("" if served else f"-shadow-{arm}"), at=now, model=spec.name, version=version, arm=arm,
        features=json.dumps({k: v.value for k, v in features[i].values.items()}, default=str),
        inputs=json.dumps(instances[i], default=str), score=score, latency_ms=latency, status=status, served=served)
        for i, arm, version, score, latency, status, served in rows]
    await service.predlog.append_async(records)
    return [r.request_id for r in records]


async def _answer(service: Service, spec: ModelSpec, routes: list[Route], instances: list[dict[str, Any]],
                  features: list[Any], scores: list[float], latency: list[float], batch: str) -> PredictResponse:
    rows = [(i, r.arm, r.version, scores[i], latency[i], "ok", True) for i, r in enumerate(routes)]
    request_ids = await _log(service, spec, rows, instances, features, batch)  # durable before the response leaves
    answers = []
    for i, (route, feats) in enumerate(zip(routes, features, strict=True)):
        statuses = feature_statuses(feats)
        missing = missing_count(feats)
        answers.append(Prediction(score=scores[i], model=spec.name, version=route.version, arm=route.arm,
                                  request_id=request_ids[i], feature_statuses=statuses, missing_features=missing))
        metrics.PREDICTIONS.labels(model=spec.name, version=route.version, arm=route.arm).inc()
        metrics.SCORES.labels(model=spec.name).observe(scores[i])
        if missing:
            metrics.MISSING_FEATURES.labels(model=spec.name).inc(missing)
    return PredictResponse(predictions=answers)


async def _poll_deployments(service: Service) -> None:
    """Follow the state store: every worker routes by a changed split within about a second."""
    while True:
        await asyncio.sleep(POLL_SECONDS)
        for name in service.specs:
            await asyncio.to_thread(service.sync, name)


def from_environment() -> FastAPI:
    """The app for the profile in the environment: uvicorn's factory in every worker process."""
    from loopwise.config import load_settings

    return create_app(Backends(load_settings()))
