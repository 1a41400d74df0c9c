"""The HTTP API: `create_app()` builds it; uvicorn runs it with `--factory`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from goshen.catalog import ensure_builtin_models
from goshen.config import Settings, load_settings
from goshen.db import make_engine, make_sessionmaker, migrate, session_scope
from goshen.storage import make_store
from serving.body_limit import BodySizeLimit
from serving.job_watch import JobWatcher
from serving.metrics import install_metrics
from serving.problems import install_problem_handlers
from serving.routes import (
    admin,
    datasets,
    files,
    generate,
    health,
    jobs,
    keys,
    models,
    training,
    webhooks,
)

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
        app.state.store = make_store(settings)
        with session_scope(app.state.sessionmaker) as session:
            ensure_builtin_models(session)
        app.state.job_watcher = JobWatcher(settings.resolved_database_url)
        app.state.job_watcher.start()
        try:
            yield
        finally:
            app.state.job_watcher.stop()
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
        exempt=(("POST", "/v1/datasets"),),
    )
    app.state.metrics = install_metrics(app)
    install_problem_handlers(app)
    routers = (health, keys, admin, files, datasets, training, webhooks, models, generate, jobs)
    for router in (module.router for module in routers):
        app.include_router(router)
    return app
