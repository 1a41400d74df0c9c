"""Dependencies shared by the routes, as `Annotated` aliases that read like a contract."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from goshen import accounts
from goshen.accounts import Principal
from goshen.config import Settings
from goshen.storage import ArtifactStore

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer gsk_...`")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """A session per request; routes commit what they change, anything else is rolled back."""
    with request.app.state.sessionmaker() as session:
        yield session


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def get_principal(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from the `Authorization: Bearer` header (the only place a key is accepted)."""
    if credentials is None:
        raise _unauthorized("missing API key: send `Authorization: Bearer gsk_...`")
    principal = accounts.authenticate(session, credentials.credentials)
    if principal is None:
        raise _unauthorized("invalid API key: it is unknown, revoked, or its user is disabled")
    session.commit()  # keeps last_used_at and ends the transaction before the route runs
    return principal


def require_scope(scope: str) -> Callable[[Principal], Principal]:
    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.has_scope(scope):
            raise HTTPException(403, f"this API key lacks the '{scope}' scope")
        return principal

    return check


def require_any_scope(*scopes: str) -> Callable[[Principal], Principal]:
    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not any(principal.has_scope(scope) for scope in scopes):
            wanted = " or ".join(f"'{scope}'" for scope in scopes)
            raise HTTPException(403, f"this API key lacks the {wanted} scope")
        return principal

    return check


def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.is_admin:
        raise HTTPException(403, "admin routes need an admin user's key with the 'admin' scope")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
KeysPrincipal = Annotated[Principal, Depends(require_scope("keys"))]
AdminPrincipal = Annotated[Principal, Depends(require_admin)]
