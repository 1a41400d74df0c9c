"""Dependencies shared by the routes, as `Annotated` aliases that read like a contract."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Annotated, TypeVar, cast

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from goshen import accounts, keys
from goshen.accounts import Principal
from goshen.billing.rate_limits import RouteClass, route_class
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import utcnow
from goshen.storage import ArtifactStore
from serving.catalog.cache import CatalogCache
from serving.http.inflight import Lanes, hold_in_flight
from serving.http.principal_cache import PrincipalCache
from serving.http.state import ApiState
from serving.http.streams import StreamHub
from serving.jobs.effects import JobEffects
from serving.jobs.watch import JobWatcher

T = TypeVar("T")
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer gsk_...`")


def api_state(request: Request) -> ApiState:
    """The process's long-lived parts; the one place that reads `app.state`."""
    return cast(ApiState, request.app.state.api)  # Starlette's State holds untyped attributes


def get_session(request: Request) -> Iterator[Session]:
    """A session per request; routes commit what they change, anything else is rolled back."""
    with api_state(request).sessions() as session:
        yield session


def get_read_session(request: Request) -> Iterator[Session]:
    """A session on the read-only engine, for routes that only read (no write lock on SQLite)."""
    with api_state(request).read_sessions() as session:
        yield session


def _part(pick: Callable[[ApiState], T]) -> Callable[[Request], Awaitable[T]]:
    """A dependency answering one long-lived part of the API's state. Async, so that reading it
    costs no hop to a worker thread."""

    async def get(request: Request) -> T:
        return pick(api_state(request))

    return get


SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
ApiStateDep = Annotated[ApiState, Depends(_part(lambda state: state))]
SettingsDep = Annotated[Settings, Depends(_part(lambda state: state.settings))]
StoreDep = Annotated[ArtifactStore, Depends(_part(lambda state: state.store))]
SessionsDep = Annotated[sessionmaker[Session], Depends(_part(lambda state: state.sessions))]
ReadSessionsDep = Annotated[
    sessionmaker[Session], Depends(_part(lambda state: state.read_sessions))
]
PrincipalsDep = Annotated[PrincipalCache, Depends(_part(lambda state: state.principals))]
CatalogCacheDep = Annotated[CatalogCache, Depends(_part(lambda state: state.catalog))]
JobWatcherDep = Annotated[JobWatcher, Depends(_part(lambda state: state.job_watcher))]
JobEffectsDep = Annotated[JobEffects, Depends(_part(lambda state: state.job_effects))]


StreamsDep = Annotated[StreamHub, Depends(_part(lambda state: state.streams))]
# The app's in-flight counts and submission turns per account, and its hot-read threads.
LanesDep = Annotated[Lanes, Depends(_part(lambda state: state.lanes))]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> AsyncIterator[Principal]:
    """The caller, from the `Authorization: Bearer` header (the only place a key is accepted).

    Cached in memory (serving.http.principal_cache: a revocation anywhere drops the cache before the
    next request), else read through the read-only engine, so authentication never waits for
    the write lock; the once-a-minute last_used_at is a write of its own. Async, so a cached
    key costs no hop to a worker thread. The request then holds one of its account's slots
    (serving.http.inflight; 429 when they are taken) until the route's function returns (the
    dependency's scope is "function": an event stream gives its slot back before it streams),
    and counts against the key's rate limit for its route's class (serving.http.rate_limits).
    """
    if credentials is None:
        raise _unauthorized("missing API key: send `Authorization: Bearer gsk_...`")
    principal = await principal_for(request, credentials.credentials)
    release = hold_in_flight(request.scope, api_state(request).lanes.in_flight, principal.user.id)
    try:
        counted_as = route_class(request.method, request.scope["path"])
        await api_state(request).rate_limits.admit(request.scope, principal.key.id, counted_as)
        yield principal
    finally:
        release()


# Every route's principal: the slot it holds is given back when the route's function returns.
_Principal = Annotated[Principal, Depends(get_principal, scope="function")]


async def authenticate(
    request: Request, state: ApiState, scope: str, counted_as: RouteClass
) -> Principal:
    """What `require_scope(scope)` checks, called directly by the hottest route (/predict),
    where FastAPI's dependency resolution would cost more than the prediction; the request
    counts against the key's `counted_as` rate limit. `state` is the API's (`api_state`)."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise _unauthorized("missing API key: send `Authorization: Bearer gsk_...`")
    principal = await principal_for(request, key.strip(), state)
    if not principal.has_scope(scope):
        raise HTTPException(403, f"this API key lacks the '{scope}' scope")
    await state.rate_limits.admit(request.scope, principal.key.id, counted_as)
    return principal


async def principal_for(
    request: Request, plaintext: str, state: ApiState | None = None
) -> Principal:
    """The principal of a presented key: from the cache, else the read-only engine. (`state`:
    the API's, when the caller has it at hand.)"""
    principal = (state or api_state(request)).principals.get(plaintext)
    if principal is None:
        principal = await _look_up_unless_refused(request, plaintext)
    if accounts.needs_touch(principal.key):
        await run_in_threadpool(_touch, request, principal.key.id)
        principal.key.last_used_at = utcnow()
    return principal


async def _look_up_unless_refused(request: Request, plaintext: str) -> Principal:
    """Look a key up, counting a failure against the client's address; past the address's
    failed-authentication limit, only keys this process has seen authenticate are looked up
    (serving.http.rate_limits), so that guessing learns nothing more."""
    rate_limits = api_state(request).rate_limits
    # Behind a proxy, the proxy's address unless uvicorn's --forwarded-allow-ips trusts it.
    address = request.client.host if request.client else "unknown"
    key_hash = keys.hash_key(plaintext)
    await rate_limits.refuse_address(address, key_hash)
    try:
        principal = await run_in_threadpool(_look_up, request, plaintext)
    except HTTPException:
        await rate_limits.count_failure(address)
        raise
    rate_limits.remember(key_hash)
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
    async def check(principal: _Principal) -> Principal:
        if not any(principal.has_scope(scope) for scope in scopes):
            wanted = " or ".join(f"'{scope}'" for scope in scopes)
            raise HTTPException(403, f"this API key lacks the {wanted} scope")
        return principal

    return check


def require_scope(scope: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency: the caller's key must carry `scope` (403 otherwise)."""
    return require_any_scope(scope)


async def require_admin(principal: _Principal) -> Principal:
    if not principal.is_admin:
        raise HTTPException(403, "admin routes need an admin user's key with the 'admin' scope")
    return principal


CurrentPrincipal = _Principal
KeysPrincipal = Annotated[Principal, Depends(require_scope("keys"))]
AdminPrincipal = Annotated[Principal, Depends(require_admin)]
