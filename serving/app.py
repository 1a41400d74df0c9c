"""The HTTP API: `create_app()` builds it; uvicorn runs it with `--factory`."""

from __future__ import annotations

import gc
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial

import mlflow
from fastapi import Depends, FastAPI

from goshen.catalog import ensure_builtin_models
from goshen.config import Settings, load_settings
from goshen.db import make_engine, make_sessionmaker, migrate, session_scope
from goshen.db.notifications import KEYS_CHANNEL, is_postgres
from goshen.storage import make_store
from serving.catalog.cache import CatalogCache
from serving.catalog.registry_sync import RegistrySync
from serving.http.body_limit import BodyLimit
from serving.http.content_type import json_bodies_only
from serving.http.direct_routes import DirectRoutesApp
from serving.http.edge import Edge
from serving.http.inflight import Lanes
from serving.http.metrics import ApiMetrics
from serving.http.openapi import install_openapi
from serving.http.principal_cache import PrincipalCache
from serving.http.problems import install_problem_handlers
from serving.http.rate_limits import RateLimits
from serving.http.state import ApiState
from serving.http.streams import StreamHub
from serving.jobs.effects import JobEffects
from serving.jobs.watch import JobWatcher
from serving.predict.credit import PredictCredit
from serving.predict.metering import UsageRecorder
from serving.predict.models import PredictModels
from serving.routes import (
    admin,
    admin_billing,
    admin_credits,
    admin_jobs,
    admin_models,
    admin_ops,
    admin_storage,
    admin_training,
    credits,
    datasets,
    files,
    generate,
    health,
    invoices,
    jobs,
    keys,
    model_uploads,
    models,
    owned_models,
    predict,
    stripe_webhook,
    training,
    usage,
    webhooks,
)

API_DESCRIPTION = """Goshen's HTTP API. Authenticate with an API key in the `Authorization` header:
`Authorization: Bearer gsk_...`. Errors are `application/problem+json` (RFC 9457)."""


def build_state(settings: Settings, metrics: ApiMetrics, streams: StreamHub) -> ApiState:
    """Open the databases (migrated, built-in models in place) and build the long-lived parts."""
    engine = make_engine(
        settings.resolved_database_url, timeout=settings.dependency_timeout_seconds
    )
    migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    metrics.credits.watch(sessions)  # /predict's captures, and jobs ended here
    read_engine = make_engine(
        settings.resolved_database_url,
        read_only=True,
        timeout=settings.dependency_timeout_seconds,
    )
    read_sessions = make_sessionmaker(read_engine)
    with session_scope(sessions) as session:
        ensure_builtin_models(session)
    mlflow.set_tracking_uri(settings.resolved_mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.resolved_mlflow_tracking_uri)
    postgres = is_postgres(settings.resolved_database_url)
    job_watcher = JobWatcher(
        settings.resolved_database_url,
        also={KEYS_CHANNEL: lambda user_id: principals.forget_user(user_id)},
    )
    principals = PrincipalCache(
        listen_session=(lambda: job_watcher.listen_session) if postgres else None,
        stamp=None if postgres else settings.home_dir / "keys-changed",
    )
    store = make_store(settings)
    return ApiState(
        settings=settings,
        engine=engine,
        read_engine=read_engine,
        sessions=sessions,
        read_sessions=read_sessions,
        store=store,
        metrics=metrics,
        job_watcher=job_watcher,
        job_effects=JobEffects(store, settings.api_url),
        principals=principals,
        catalog=CatalogCache(read_sessions),
        predict_models=PredictModels(settings, RegistrySync(settings), metrics),
        usage=UsageRecorder(sessions),
        predict_credit=(
            PredictCredit(sessions, chunk_micros=settings.predict_credit_chunk_micros)
            if settings.billing_enabled
            else None
        ),
        rate_limits=RateLimits(settings, on_refusal=metrics.refused),
        streams=streams,
        lanes=Lanes.build(settings.max_requests_in_flight_per_account),
    )


@contextmanager
def running(state: ApiState) -> Iterator[None]:
    """Run the state's background threads while the block runs; then stop them and close."""
    state.job_watcher.start()
    # What startup built (imports, settings, tables) lives as long as the process: keep it
    # out of the cyclic collector's passes, whose full sweeps of it stall every request.
    gc.freeze()
    state.usage.start()
    if state.predict_credit is not None:
        state.predict_credit.start()
    # In the background, entries awaiting their alias follow the registry and live ONNX models
    # load, and both keep following from then on; /readyz answers 503 until the first pass ran
    # and the public live models have loaded.
    reconciler_stop = threading.Event()
    reconciler = threading.Thread(
        target=state.predict_models.run_reconciler,
        args=(state.read_sessions, state.sessions, reconciler_stop),
        name="model-reconciler",
        daemon=True,
    )
    reconciler.start()
    try:
        yield
    finally:
        reconciler_stop.set()
        reconciler.join(timeout=10)
        if state.predict_credit is not None:
            state.predict_credit.stop()
        state.usage.stop()
        state.predict_models.close()
        state.job_watcher.stop()
        state.catalog.close()
        state.read_engine.dispose()
        state.engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    # Built with the app, not in its lifespan: the server tells it when it begins to stop.
    streams = StreamHub()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings, metrics, streams)
        app.state.api = state  # read only by serving.http.dependencies.api_state
        with running(state):
            try:
                yield
            finally:
                streams.begin_shutdown()  # a server that did not tell them (serving.server)

    app = DirectRoutesApp(
        title="Goshen",
        version="1",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        # The API's spans are goshen.tracing's. FastAPI's own would ask OpenTelemetry's global
        # providers on every request whether to make some (a few µs of each /predict).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    metrics = ApiMetrics(settings)
    edge = partial(
        Edge,
        metrics=metrics,
        # Dataset and model uploads stream to disk under GOSHEN_MAX_UPLOAD_BYTES instead.
        body_limit=BodyLimit(
            max_bytes=settings.max_request_bytes,
            exempt=(("POST", "/v1/datasets"), ("POST", "/v1/models")),
        ),
    )
    app.add_middleware(edge)  # every request's id, body cap, headers, metrics, 500 problems
    # /predict straight to its route, inside the edge alone.
    app.serve_directly(predict.router.routes, edge)
    install_problem_handlers(app)
    routers = (
        predict,  # first: the hottest route, and routes are matched in order
        health,
        keys,
        admin,
        admin_credits,
        admin_billing,
        admin_models,
        admin_jobs,
        admin_ops,
        admin_storage,
        admin_training,
        files,
        datasets,
        training,
        webhooks,
        model_uploads,
        models,
        owned_models,
        generate,
        jobs,
        credits,
        usage,
        invoices,
        stripe_webhook,
    )
    for router in (module.router for module in routers):
        # FastAPI would answer a text/plain body to a JSON route with 422s about its fields.
        app.include_router(router, dependencies=[Depends(json_bodies_only)])
    install_openapi(app)
    app.state.streams = streams  # read by serving.server
    return app
