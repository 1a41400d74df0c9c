"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from goshen import registry
from goshen.errors import UnavailableError
from goshen.storage import ArtifactStore
from serving.catalog.readiness import NOT_RECONCILED_YET, CatalogCheck, catalog_check
from serving.http.dependencies import ApiStateDep
from serving.http.state import ApiState
from serving.predict.models import PredictModels

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)
T = TypeVar("T")
# Probes within this many seconds share one answer from the store and the registry.
CACHE_SECONDS = 2.0


class DependencyCheck(BaseModel):
    """Whether one dependency answers."""

    ok: bool
    error: str | None = Field(description="which dependency does not answer, where, and why")


class ReadinessChecks(BaseModel):
    database: DependencyCheck
    storage: DependencyCheck
    registry: DependencyCheck = Field(description="not required: its failure only degrades")
    models: CatalogCheck


class Readiness(BaseModel):
    """`ok`: every check passed. `degraded` (still 200): the registry does not answer, or a
    public model failed to load. `unavailable` (503): a required check failed."""

    status: Literal["ok", "degraded", "unavailable"]
    checks: ReadinessChecks


# /healthz and /readyz are async and take no thread of the shared pool, so that they answer
# while another account's burst holds its threads (readiness checks run in threads of their own).


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a required check failed"}},
)
async def readyz(state: ApiStateDep) -> JSONResponse:
    """Ready for traffic (200) or not (503), with each check and what failed.

    Required: the database, the artifact store, and the served catalog (the first reconcile
    pass ran and every public live ONNX model is loaded; entries whose alias the registry does
    not have yet are listed but do not count). The MLflow registry is reported but not required:
    while it does not answer, loaded models keep serving /predict and jobs for resolved models
    are accepted, so the answer is 200 with status `degraded`; so is it while a public model's
    version failed to load (its /predict answers 503; every replica would fail it alike). The
    checks run at once, each
    bounded by GOSHEN_DEPENDENCY_TIMEOUT_SECONDS, so this answers within about that long.
    """
    checks = await _checks(state)
    required = (checks.database, checks.storage, checks.models)
    if not all(check.ok for check in required):
        status: Literal["ok", "degraded", "unavailable"] = "unavailable"
    else:
        healthy = checks.registry.ok and not checks.models.failed
        status = "ok" if healthy else "degraded"
    return JSONResponse(
        Readiness(status=status, checks=checks).model_dump(mode="json"),
        status_code=503 if status == "unavailable" else 200,
    )


async def _checks(state: ApiState) -> ReadinessChecks:
    """Every check, run at once; one that has not answered by the deadline failed."""
    settings = state.settings
    timeout = settings.dependency_timeout_seconds
    deadline = time.monotonic() + timeout
    uri = settings.resolved_mlflow_tracking_uri
    engine, store, models = state.engine, state.store, state.predict_models
    database = _recent.get(("database", engine), lambda: _check_database(engine), 0)
    storage = _recent.get(("storage", store), lambda: _check_storage(store), CACHE_SECONDS)
    mlflow = _recent.get(("registry", uri), lambda: _check_registry(uri, timeout), CACHE_SECONDS)
    catalog = _recent.get(
        ("models", models), lambda: catalog_check(state.read_sessions, models, timeout), 0
    )
    pending: list[Future[Any]] = [database, storage, mlflow, catalog]
    await _wait(pending, timeout=max(0.0, deadline - time.monotonic()))
    late = f"did not answer within {timeout:g} s"
    return ReadinessChecks(
        database=_result(database, f"the database {late}"),
        storage=_result(storage, f"the artifact store {late}"),
        registry=_result(mlflow, f"the MLflow registry {late}"),
        models=catalog.result() if catalog.done() else _late_catalog(models, late),
    )


async def _wait(checks: list[Future[Any]], timeout: float) -> None:
    """Until every check has answered or `timeout` passed, without blocking the event loop.

    The checks' futures are shared with other probes, so they are only watched, never wrapped
    (`asyncio.wrap_future` would cancel a shared check when this probe's wait is cancelled).
    """
    loop = asyncio.get_running_loop()
    answered: list[asyncio.Future[None]] = []
    for check in checks:
        done: asyncio.Future[None] = loop.create_future()
        check.add_done_callback(functools.partial(_tell, loop, done))
        answered.append(done)
    await asyncio.wait(answered, timeout=timeout)


def _tell(loop: asyncio.AbstractEventLoop, done: asyncio.Future[None], _: Future[Any]) -> None:
    """Called in the check's thread when it answered: wake the probe on its loop."""
    # A check that answers after the server stopped has no probe left to tell.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_set_done, done)


def _set_done(done: asyncio.Future[None]) -> None:
    if not done.done():  # its probe may have stopped waiting
        done.set_result(None)


def _late_catalog(models: PredictModels, late: str) -> CatalogCheck:
    pending = not models.first_pass.is_set()
    error = NOT_RECONCILED_YET if pending else f"reading the catalog {late}"
    return CatalogCheck(ok=False, error=error, models=[], deploying=[])


def _result(check: Future[DependencyCheck], late: str) -> DependencyCheck:
    """A check's answer (an unexpected error in it raises here), or that it came too late."""
    return check.result() if check.done() else DependencyCheck(ok=False, error=late)


# Each check names the dependency and the kind of failure; where it is and what it said (which
# can name hosts, users and folders) go to the log, not to the anonymous callers of /readyz.


def _check_database(engine: Engine) -> DependencyCheck:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("readiness: the database does not answer: %s", exc)
        return _down("the database", exc)
    return DependencyCheck(ok=True, error=None)


def _check_storage(store: ArtifactStore) -> DependencyCheck:
    try:
        store.check()
    except UnavailableError as exc:
        log.warning("readiness: %s", exc)
        return _down("the artifact store", exc.__cause__ or exc)
    return DependencyCheck(ok=True, error=None)


def _check_registry(tracking_uri: str, timeout: float) -> DependencyCheck:
    try:
        registry.ping(tracking_uri, timeout)
    except registry.RegistryUnavailableError as exc:
        log.warning("readiness: %s", exc)
        return _down("the MLflow registry", exc.__cause__ or exc)
    return DependencyCheck(ok=True, error=None)


def _down(dependency: str, exc: BaseException) -> DependencyCheck:
    return DependencyCheck(ok=False, error=f"{dependency} does not answer ({type(exc).__name__})")


@dataclass
class _Check:
    future: Future[Any]
    keep: float  # seconds its answer is shared once it came
    answered_at: float | None = None


class _RecentChecks:
    """Checks in flight, or answered in the last seconds they may be kept, by what they check.

    Probes share them: a dependency that is slow to answer is asked once at a time, not once
    per probe, and each check runs in a thread of its own, so one that hangs holds up nothing
    but itself (probes stop waiting for it at their deadline).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: dict[tuple[str, object], _Check] = {}

    def get(self, key: tuple[str, object], check: Callable[[], T], keep: float) -> Future[T]:
        now = time.monotonic()
        with self._lock:
            for old, entry in list(self._checks.items()):
                if entry.answered_at is not None and now - entry.answered_at >= entry.keep:
                    del self._checks[old]
            found = self._checks.get(key)
            if found is not None:
                return cast("Future[T]", found.future)
            entry = self._checks[key] = _Check(Future(), keep)
        threading.Thread(
            target=self._run, args=(key, check, entry), name=f"readiness-{key[0]}", daemon=True
        ).start()
        return cast("Future[T]", entry.future)

    def _run(self, key: tuple[str, object], check: Callable[[], object], entry: _Check) -> None:
        try:
            result = check()
        except Exception as exc:  # noqa: BLE001 - handed to the probes, which raise it
            # Raised to the probes that wait for it (a 500 with a request id); never kept.
            with self._lock:
                if self._checks.get(key) is entry:
                    del self._checks[key]
            entry.future.set_exception(exc)
            return
        with self._lock:
            entry.answered_at = time.monotonic()
        entry.future.set_result(result)


_recent = _RecentChecks()


@router.get("/metrics", include_in_schema=False)
def metrics(state: ApiStateDep) -> Response:
    return state.metrics.render(state.read_sessions)
