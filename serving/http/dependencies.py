"""Dependencies shared by the routes, as `Annotated` aliases that read like a contract."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, cast

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from goshen import accounts
from goshen.accounts import Principal
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import utcnow
from goshen.storage import ArtifactStore
from serving.catalog.cache import CatalogCache
from serving.http.principal_cache import PrincipalCache
from serving.http.state import ApiState
from serving.jobs.effects import JobEffects
from serving.jobs.watch import JobWatcher
from serving.predict.metering import UsageRecorder
from serving.predict.models import PredictModels

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer gsk_...`")


def api_state(request: Request) -> ApiState:
    """The process's long-lived parts; the one place that reads `app.state`."""
    return cast(ApiState, request.app.state.api)  # Starlette's State holds untyped attributes


async def get_settings(request: Request) -> Settings:
    return api_state(request).settings


def get_session(request: Request) -> Iterator[Session]:
    """A session per request; routes commit what they change, anything else is rolled back."""
    with api_state(request).sessions() as session:
        yield session


def get_read_session(request: Request) -> Iterator[Session]:
    """A session on the read-only engine, for routes that only read (no write lock on SQLite)."""
    with api_state(request).read_sessions() as session:
        yield session


# Async, so that reading a long-lived part costs no hop to a worker thread.


async def get_store(request: Request) -> ArtifactStore:
    return api_state(request).store


async def get_sessions(request: Request) -> sessionmaker[Session]:
    return api_state(request).sessions


async def get_read_sessions(request: Request) -> sessionmaker[Session]:
    return api_state(request).read_sessions


async def get_principals(request: Request) -> PrincipalCache:
    return api_state(request).principals


async def get_catalog_cache(request: Request) -> CatalogCache:
    return api_state(request).catalog


async def get_predict_models(request: Request) -> PredictModels:
    return api_state(request).predict_models


async def get_job_watcher(request: Request) -> JobWatcher:
    return api_state(request).job_watcher


async def get_job_effects(request: Request) -> JobEffects:
    return api_state(request).job_effects


async def get_usage_recorder(request: Request) -> UsageRecorder:
    return api_state(request).usage


async def get_api_state(request: Request) -> ApiState:
    return api_state(request)


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
ReadSessionsDep = Annotated[sessionmaker[Session], Depends(get_read_sessions)]
PrincipalsDep = Annotated[PrincipalCache, Depends(get_principals)]
CatalogCacheDep = Annotated[CatalogCache, Depends(get_catalog_cache)]
PredictModelsDep = Annotated[PredictModels, Depends(get_predict_models)]
JobWatcherDep = Annotated[JobWatcher, Depends(get_job_watcher)]
JobEffectsDep = Annotated[JobEffects, Depends(get_job_effects)]
UsageRecorderDep = Annotated[UsageRecorder, Depends(get_usage_recorder)]
ApiStateDep = Annotated[ApiState, Depends(get_api_state)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from the `Authorization: Bearer` header (the only place a key is accepted).

    Cached in memory (serving.http.principal_cache: a revocation anywhere drops the cache before the
    next request), else read through the read-only engine, so authentication never waits for
    the write lock; the once-a-minute last_used_at is a write of its own. Async, so a cached
    key costs no hop to a worker thread.
    """
    if credentials is None:
        raise _unauthorized("missing API key: send `Authorization: Bearer gsk_...`")
    return await principal_for(request, credentials.credentials)


async def authenticate(request: Request, scope: str) -> Principal:
    """What `require_scope(scope)` checks, called directly by the hottest route (/predict),
    where FastAPI's dependency resolution would cost more than the prediction."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise _unauthorized("missing API key: send `Authorization: Bearer gsk_...`")
    principal = await principal_for(request, key.strip())
    if not principal.has_scope(scope):
        raise HTTPException(403, f"this API key lacks the '{scope}' scope")
    return principal


async def principal_for(request: Request, plaintext: str) -> Principal:
    """The principal of a presented key: from the cache, else the read-only engine."""
    principal = api_state(request).principals.get(plaintext)
    if principal is None:
        principal = await run_in_threadpool(_look_up, request, plaintext)
    if accounts.needs_touch(principal.key):
        await run_in_threadpool(_touch, request, principal.key.id)
        principal.key.last_used_at = utcnow()
    return principal


def _look_up(request: Request, plaintext: str) -> Principal:
    principals = api_state(request).principals
    generation = principals.generation
    with api_state(request).read_sessions() as session:
        principal = accounts.find_principal(session, plaintext)
    if principal is None:
        raise _unauthorized("invalid API key: it is unknown, revoked, or its user is disabled")
    principals.put(plaintext, principal, generation)
    return principal


def _touch(request: Request, key_id: str) -> None:
    with session_scope(api_state(request).sessions) as session:
        accounts.touch_key(session, key_id)


def require_any_scope(*scopes: str) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not any(principal.has_scope(scope) for scope in scopes):
            wanted = " or ".join(f"'{scope}'" for scope in scopes)
            raise HTTPException(403, f"this API key lacks the {wanted} scope")
        return principal

    return check


def require_scope(scope: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency: the caller's key must carry `scope` (403 otherwise)."""
    return require_any_scope(scope)


async def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.is_admin:
        raise HTTPException(403, "admin routes need an admin user's key with the 'admin' scope")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
KeysPrincipal = Annotated[Principal, Depends(require_scope("keys"))]
AdminPrincipal = Annotated[Principal, Depends(require_admin)]
