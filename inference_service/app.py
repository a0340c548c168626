"""The FastAPI application factory. Nothing happens at import.

``create_app`` reads settings and the spec; the lifespan opens the feature
store, starts the prediction-log writer thread, and starts the background task
that upgrades the store schema and loads the model (``/health/ready`` is 503
until both succeeded), then keeps polling the alias to swap in a newly promoted
version that passes every check (hot reload, ``runtime.py``). At shutdown --
after uvicorn has finished the in-flight requests -- the writer flushes every
queued prediction before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from inference_service import docs_ui, errors
from inference_service.config import Settings
from inference_service.cpu_slot import CpuSlot
from inference_service.guard import Guard
from inference_service.invocations import Signature
from inference_service.log_process import ProcessLogWriter
from inference_service.model_loader import MlflowLoader
from inference_service.observability import Observability, ObserveRequests
from inference_service.prediction_log import PredictionLog, PredictionLogWriter
from inference_service.routes import health, metrics, mlflow_compat, predictions
from inference_service.routes.predict import PredictLane, build_router
from inference_service.runtime import Runtime
from inference_service.schemas import predict_request_schema
from inference_service.store_guard import StoreGuard
from shared.db import make_engine
from shared.spec import SpecError, load_spec

log = logging.getLogger(__name__)


class ServeConfigError(RuntimeError):
    """The service cannot start with these settings."""


def create_app(settings: Settings | None = None, loader: Any | None = None) -> FastAPI:
    settings = settings or Settings()
    if settings.spec is None:
        raise ServeConfigError("no spec to serve: pass --spec PATH or set FTI_SPEC")
    try:
        loaded = load_spec(settings.spec)
    except SpecError as exc:
        raise ServeConfigError(str(exc)) from exc
    spec = loaded.spec

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # MLflow's client retries a down registry for minutes by default; the runtime's own capped
        # back-off is what decides how soon the service is ready again (FTI_LOAD_RETRY_MAX_SECONDS).
        for var, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                           ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")):
            os.environ.setdefault(var, value)
        engine = make_engine(settings.feature_store_url, must_exist=True)
        cpu_slot = CpuSlot(settings.cpu_slots)
        writer: PredictionLog | None = None
        if settings.prediction_log and settings.prediction_log_process:
            writer = ProcessLogWriter(engine, spec, max_queue=settings.prediction_log_queue,
                                      flush_interval=settings.prediction_log_process_flush_seconds,
                                      nice=settings.prediction_log_nice, sched_idle=settings.prediction_log_sched_idle,
                                      cpu_slot=cpu_slot,
                                      fallback_flush_interval=settings.prediction_log_flush_seconds)
        elif settings.prediction_log:
            writer = PredictionLogWriter(engine, max_queue=settings.prediction_log_queue,
                                         flush_interval=settings.prediction_log_flush_seconds, cpu_slot=cpu_slot,
                                         spec=spec)
        store_guard = StoreGuard(engine, spec.name)
        if writer is not None:
            writer.store_check = store_guard.file_problem
            writer.start()
        runtime = Runtime(settings=settings, spec=loaded, engine=engine, store_guard=store_guard,
                          loader=loader or MlflowLoader(settings.tracking_uri, settings.registry_uri,
                                                        settings.cache_dir,
                                                        allow_env_mismatch=settings.allow_env_mismatch,
                                                        fast_path=settings.fast_path,
                                                        fast_path_tree_rows=settings.fast_path_tree_rows,
                                                        memory_limit_mb=settings.model_load_memory_mb),
                          prediction_log=writer, obs=obs, cpu_slot=cpu_slot)
        app.state.runtime = runtime
        task = asyncio.create_task(runtime.run(), name="model-loader")  # first load, then hot reload
        if isinstance(writer, ProcessLogWriter):  # while the model loads: take no request before the log can
            await asyncio.to_thread(writer.wait_ready, 60.0)
        flusher = asyncio.create_task(obs.flush_access_log_periodically(), name="access-log")
        try:
            yield
        finally:
            task.cancel()
            flusher.cancel()
            for t in (task, flusher):
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            obs.flush_access_log()
            if writer is not None:  # after uvicorn's graceful wait (10 s): fits a 30 s termination grace period
                await asyncio.to_thread(writer.close, 15.0)
            engine.dispose()

    # No FastAPI max_body_size: its 413 is plain text from outside every middleware (no request id). The
    # guard refuses a declared length over FTI_MAX_BODY_BYTES; the scoring lanes count the bytes they read.
    app = FastAPI(title=f"fti inference: {spec.name}", version="0.1.0", lifespan=lifespan, docs_url=None,
                  redoc_url=None,  # /docs from packaged files (docs_ui), never a CDN
                  description=f"Scores raw {spec.name} records with the `{spec.model.name}@{settings.model_alias}` "
                              "model. Features are computed by the same `shared` code as the feature pipeline; "
                              "history features are read from the feature table as of each record's event time.")
    obs = Observability(lambda: getattr(app.state, "runtime", None))
    app.state.obs = obs
    errors.install(app)
    # Routes are matched in order: the scoring endpoints first, so the hot path matches at once.
    signature = Signature.from_spec(spec)
    app.include_router(mlflow_compat.build_router(signature, obs, max_rows=settings.max_invocation_rows))
    app.include_router(build_router(predict_request_schema(spec, settings.max_batch_rows), obs))
    app.include_router(health.router)
    app.include_router(predictions.router)
    app.include_router(metrics.build_router(obs))
    docs_ui.install(app)
    guard = Guard.from_settings(settings)  # refuses an unsafe key/host configuration before the port opens
    app.state.guard = guard
    app.add_middleware(ObserveRequests, obs=obs, access_log_on=settings.access_log, guard=guard,
                       log_probes=settings.access_log_probes,
                       log_bodies=settings.log_request_bodies, json_lines=settings.log_format == "json",
                       fast_lane=Lanes([mlflow_compat.FastLane(lambda: app.state.runtime, signature, obs,
                                                               max_rows=settings.max_invocation_rows,
                                                               max_body_bytes=settings.max_body_bytes),
                                        PredictLane(lambda: app.state.runtime, obs,
                                                    max_body_bytes=settings.max_body_bytes)]))
    return app


class Lanes:
    """The scoring hot paths the middleware answers itself (``/invocations``, ``/predict``), first match wins."""

    def __init__(self, lanes: list[Any]):
        self.lanes = lanes

    def handles(self, scope: dict[str, Any]) -> bool:
        return any(lane.handles(scope) for lane in self.lanes)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any, state: dict[str, Any]) -> None:
        for lane in self.lanes:
            if lane.handles(scope):
                await lane(scope, receive, send, state)
                return
