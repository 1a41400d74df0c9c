"""Dependencies shared by the routes, as `Annotated` aliases that read like a contract."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from goshen import accounts
from goshen.accounts import Principal
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import utcnow
from goshen.storage import ArtifactStore

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer gsk_...`")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """A session per request; routes commit what they change, anything else is rolled back."""
    with request.app.state.sessionmaker() as session:
        yield session


def get_read_session(request: Request) -> Iterator[Session]:
    """A session on the read-only engine, for routes that only read (no write lock on SQLite)."""
    with request.app.state.read_sessionmaker() as session:
        yield session


async def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from the `Authorization: Bearer` header (the only place a key is accepted).

    Cached in memory (serving.principal_cache: a revocation anywhere drops the cache before the
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
    state = request.app.state
    principal = state.principals.get(plaintext)
    if principal is None:
        principal = await run_in_threadpool(_look_up, request, plaintext)
    if accounts.needs_touch(principal.key):
        await run_in_threadpool(_touch, request, principal.key.id)
        principal.key.last_used_at = utcnow()
    return principal


def _look_up(request: Request, plaintext: str) -> Principal:
    principals = request.app.state.principals
    generation = principals.generation
    with request.app.state.read_sessionmaker() as session:
        principal = accounts.find_principal(session, plaintext)
    if principal is None:
        raise _unauthorized("invalid API key: it is unknown, revoked, or its user is disabled")
    principals.put(plaintext, principal, generation)
    return principal


def _touch(request: Request, key_id: str) -> None:
    with session_scope(request.app.state.sessionmaker) as session:
        accounts.touch_key(session, key_id)


def require_scope(scope: str) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.has_scope(scope):
            raise HTTPException(403, f"this API key lacks the '{scope}' scope")
        return principal

    return check


def require_any_scope(*scopes: str) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not any(principal.has_scope(scope) for scope in scopes):
            wanted = " or ".join(f"'{scope}'" for scope in scopes)
            raise HTTPException(403, f"this API key lacks the {wanted} scope")
        return principal

    return check


async def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.is_admin:
        raise HTTPException(403, "admin routes need an admin user's key with the 'admin' scope")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
KeysPrincipal = Annotated[Principal, Depends(require_scope("keys"))]
AdminPrincipal = Annotated[Principal, Depends(require_admin)]
