"""The HTTP API: `create_app()` builds it; uvicorn runs it with `--factory`."""

from __future__ import annotations

import gc
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import mlflow
from fastapi import FastAPI

from goshen.catalog import ensure_builtin_models
from goshen.config import Settings, load_settings
from goshen.db import make_engine, make_sessionmaker, migrate, session_scope
from goshen.storage import make_store
from serving.body_limit import BodySizeLimit
from serving.catalog_cache import CatalogCache
from serving.job_watch import JobWatcher
from serving.metrics import install_metrics
from serving.notifications import KEYS_CHANNEL, is_postgres
from serving.predict_models import PredictModels
from serving.principal_cache import PrincipalCache
from serving.problems import install_problem_handlers
from serving.routes import (
    admin,
    admin_models,
    datasets,
    files,
    generate,
    health,
    jobs,
    keys,
    model_uploads,
    models,
    predict,
    training,
    webhooks,
)
from serving.usage_recorder import UsageRecorder

API_DESCRIPTION = """Goshen's HTTP API. Authenticate with an API key in the `Authorization` header:
`Authorization: Bearer gsk_...`. Errors are `application/problem+json` (RFC 9457)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.resolved_database_url)
        migrate.upgrade(engine)
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        read_engine = make_engine(settings.resolved_database_url, read_only=True)
        app.state.read_sessionmaker = make_sessionmaker(read_engine)
        app.state.store = make_store(settings)
        with session_scope(app.state.sessionmaker) as session:
            ensure_builtin_models(session)
        mlflow.set_tracking_uri(settings.resolved_mlflow_tracking_uri)
        mlflow.set_registry_uri(settings.resolved_mlflow_tracking_uri)
        postgres = is_postgres(settings.resolved_database_url)
        app.state.job_watcher = JobWatcher(
            settings.resolved_database_url,
            also={KEYS_CHANNEL: lambda user_id: app.state.principals.forget_user(user_id)},
        )
        app.state.principals = PrincipalCache(
            listen_session=(lambda: app.state.job_watcher.listen_session) if postgres else None,
            stamp=None if postgres else settings.home_dir / "keys-changed",
        )
        app.state.job_watcher.start()
        # What startup built (imports, settings, tables) lives as long as the process: keep it
        # out of the cyclic collector's passes, whose full sweeps of it stall every request.
        gc.freeze()
        app.state.catalog_cache = CatalogCache(app.state.read_sessionmaker)
        app.state.predict_models = PredictModels(settings, app.state.metrics)
        app.state.usage = UsageRecorder(app.state.sessionmaker)
        app.state.usage.start()
        # Live ONNX models load in the background, and follow the catalog from then on; /readyz
        # answers 503 until the public ones have loaded.
        reconciler_stop = threading.Event()
        reconciler = threading.Thread(
            target=app.state.predict_models.run_reconciler,
            args=(app.state.read_sessionmaker, app.state.sessionmaker, reconciler_stop),
            name="model-reconciler",
            daemon=True,
        )
        reconciler.start()
        try:
            yield
        finally:
            reconciler_stop.set()
            reconciler.join(timeout=10)
            app.state.usage.stop()
            app.state.predict_models.close()
            app.state.job_watcher.stop()
            read_engine.dispose()
            engine.dispose()

    app = FastAPI(
        title="Goshen",
        version="1",
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    # Dataset uploads stream to disk under GOSHEN_MAX_UPLOAD_BYTES instead.
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_request_bytes,
        exempt=(("POST", "/v1/datasets"), ("POST", "/v1/models")),
    )
    app.state.metrics = install_metrics(app)
    install_problem_handlers(app)
    routers = (
        predict,  # first: the hottest route, and routes are matched in order
        health,
        keys,
        admin,
        admin_models,
        files,
        datasets,
        training,
        webhooks,
        model_uploads,
        models,
        generate,
        jobs,
    )
    for router in (module.router for module in routers):
        app.include_router(router)
    return app
