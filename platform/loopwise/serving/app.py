"""The serving app: every declared model on the KServe v1 protocol, with health, readiness and metrics.

`POST /v1/models/{name}:predict` takes `{"instances": [...]}` (each instance the model's declared
request schema: its entity keys and request-time inputs) and returns `{"predictions": [...]}`, each
with the score, the version and arm that answered, the features' statuses and a request id. Every
answer is in the prediction log before the response leaves. Features are read from the online store
in-process; scoring is micro-batched per model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field, create_model

from loopwise.backends import Backends
from loopwise.serving import metrics
from loopwise.serving.auth import Authenticator, Identity, for_predictions, require
from loopwise.serving.models import (
    Batcher,
    LoadedVersion,
    ModelNotReady,
    feature_statuses,
    join_keys_of,
    load_version,
    missing_count,
    resolve_version,
)
from loopwise.usecase import ModelSpec

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0  # how soon every worker sees a recorded deployment
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


class ModelMetadata(BaseModel):
    name: str
    ready: bool
    versions: list[dict[str, Any]]
    traffic: dict[str, float] = Field(description="share of requests per arm")
    inputs: list[str]
    feature_service: str


class Service:
    """The state one worker process serves from: loaded versions, batchers, the prediction log."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.settings = backends.settings
        self.specs = {spec.name: spec for spec in backends.use_case.models}
        self.loaded: dict[str, LoadedVersion] = {}
        self.batchers: dict[str, Batcher] = {}
        self.errors: dict[str, str] = {}
        self.store: Any = None
        self.events = backends.events()
        self.predlog: Any = None

    def load(self, name: str) -> None:
        """Load (or reload) the version the state store says serves `name`; keep the old one on failure."""
        spec = self.specs[name]
        try:
            version, arm = resolve_version(self.settings.tracking_uri, self.events, spec)
            current = self.loaded.get(name)
            if current and current.version == version and current.arm == arm:
                return
            loaded = load_version(self.settings.tracking_uri, spec, version, arm,
                                  join_keys_of(self.store, spec.feature_service))
        except Exception as exc:  # noqa: BLE001 - a model that cannot load is reported by /readyz, not fatal
            self.errors[name] = str(exc)
            log.warning("model %s not loaded: %s", name, exc)
            return
        self.loaded[name] = loaded
        serving = self.settings.serving
        self.batchers[name] = Batcher(loaded.score, serving.max_batch if serving.micro_batching else 1,
                                      serving.batch_wait_ms)
        self.errors.pop(name, None)
        log.info("serving %s version %s (%s)", name, loaded.version, loaded.arm)

    def startup(self) -> None:
        from loopwise.features.store import ensure_applied

        self.store = self.backends.feature_store()
        ensure_applied(self.store, self.backends.use_case.feature_repo, self.settings.lake_uri)
        for name in self.specs:
            self.load(name)
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
    predlog.start_flusher(5.0)  # recovers first: what an earlier process left lands in Delta
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
        problems = {name: service.errors.get(name, "loading") for name in service.specs if name not in service.loaded}
        store_problem = service.online_store_answers() if service.store is not None else "starting"
        if store_problem:
            problems["online store"] = store_problem
        if problems:
            return JSONResponse({"ready": False, "problems": problems}, status_code=503)
        return JSONResponse({"ready": True, "models": {n: v.version for n, v in service.loaded.items()}})

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prometheus() -> PlainTextResponse:
        body, content_type = metrics.render()
        return PlainTextResponse(body, media_type=content_type)

    @app.get("/v1/models", tags=["predict"], summary="The declared models")
    async def models() -> dict[str, list[str]]:
        return {"models": list(service.specs)}

    @app.get("/v1/models/{name}", tags=["predict"], response_model=ModelMetadata,
             summary="A model's metadata: versions loaded and the traffic split")
    async def metadata(name: str) -> ModelMetadata:
        spec = _spec(service, name)
        loaded = service.loaded.get(name)
        versions = [] if loaded is None else [{"version": loaded.version, "arm": loaded.arm,
                                               "loaded_at": datetime.fromtimestamp(loaded.loaded_at, UTC).isoformat()}]
        return ModelMetadata(name=name, ready=loaded is not None, versions=versions,
                             traffic={} if loaded is None else {loaded.arm: 1.0}, inputs=spec.inputs,
                             feature_service=spec.feature_service)

    @app.post("/v1/models/{name}:reload", tags=["admin"], response_model=ModelMetadata,
              summary="Load the version the state store names for this model now (operator role)")
    async def reload(name: str, caller: Operator) -> ModelMetadata:
        _spec(service, name)
        await asyncio.to_thread(service.load, name)
        if name in service.errors:
            raise HTTPException(409, f"{name} could not be loaded: {service.errors[name]}")
        log.info("%s reloaded by %s", name, caller.subject)
        return await metadata(name)

    for spec in service.specs.values():
        _add_predict_route(app, service, spec)


    from loopwise.serving.feature_server import feature_router

    stale_after = timedelta(hours=settings.features.stale_after_hours)
    # Reads follow the prediction routes' rule; writes to the online store need the operator role.
    app.include_router(feature_router(lambda: service.store or backends.feature_store(), stale_after,
                                      write_dependencies=[require("operator")]),
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
        loaded = service.loaded.get(spec.name)
        if loaded is None:
            metrics.ERRORS.labels(cause="model_not_ready").inc()
            raise HTTPException(503, service.errors.get(spec.name) or f"{spec.name} is still loading")
        instances = [i.model_dump() for i in body.instances]  # type: ignore[attr-defined]
        rows = [{k: inst[k] for k in loaded.join_keys} for inst in instances]
        stale_after = timedelta(hours=service.settings.features.stale_after_hours)
        from loopwise.features.retrieval import online_features

        features = await asyncio.to_thread(online_features, service.store, spec.feature_service, rows, stale_after)
        try:
            scores = await service.batchers[spec.name].submit(loaded.frame(instances, features))
        except Exception as exc:  # noqa: BLE001 - the model failed: a 500 that names the cause, counted
            metrics.ERRORS.labels(cause="model_error").inc()
            raise HTTPException(500, f"{spec.name} version {loaded.version} failed to score: {exc}") from exc
        return await _answer(service, loaded, instances, features, scores)

    # The body's schema is built per model at run time: give FastAPI the class, not the postponed annotation.
    predict.__annotations__.update(body=body_model, caller=Caller, return_=None)
    predict.__annotations__.pop("return_")
    app.post(f"/v1/models/{spec.name}:predict", tags=["predict"], response_model=PredictResponse,
             summary=f"Score {spec.name}", description=spec.description, name=f"predict_{spec.slug}")(predict)


async def _answer(service: Service, loaded: LoadedVersion, instances: list[dict[str, Any]], features: list[Any],
                  scores: Any) -> PredictResponse:
    from loopwise.serving.predlog import Prediction as LoggedPrediction

    now = datetime.now(UTC)
    batch = uuid.uuid4().hex
    answers, records = [], []
    for i, (instance, feats, score) in enumerate(zip(instances, features, scores, strict=True)):
        request_id = f"{batch}-{i}"
        statuses = feature_statuses(feats)
        answers.append(Prediction(score=float(score), model=loaded.spec.name, version=loaded.version, arm=loaded.arm,
                                  request_id=request_id, feature_statuses=statuses, missing_features=missing_count(feats)))
        records.append(LoggedPrediction(
            request_id=request_id, at=now, model=loaded.spec.name, version=loaded.version, arm=loaded.arm,
            features=json.dumps({k: v.value for k, v in feats.values.items()}, default=str),
            inputs=json.dumps(instance, default=str), score=float(score)))
        metrics.PREDICTIONS.labels(model=loaded.spec.name, version=loaded.version, arm=loaded.arm).inc()
        metrics.SCORES.labels(model=loaded.spec.name).observe(float(score))
        if answers[-1].missing_features:
            metrics.MISSING_FEATURES.labels(model=loaded.spec.name).inc(answers[-1].missing_features)
    await service.predlog.append_async(records)  # durable before the response leaves
    return PredictResponse(predictions=answers)


async def _poll_deployments(service: Service) -> None:
    """Follow the state store: a recorded deployment is loaded by every worker within a second or so."""
    while True:
        await asyncio.sleep(POLL_SECONDS)
        for name in service.specs:
            try:
                await asyncio.to_thread(service.load, name)
            except ModelNotReady:
                continue


def from_environment() -> FastAPI:
    """The app for the profile in the environment: uvicorn's factory in every worker process."""
    from loopwise.config import load_settings

    return create_app(Backends(load_settings()))
