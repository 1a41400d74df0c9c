"""Admin routes: users and every user's keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from goshen import accounts
from goshen.db.models import ApiKey, User, utcnow
from goshen.errors import ConflictError
from goshen.ids import id_pattern
from serving.http.dependencies import AdminPrincipal, PrincipalsDep, SessionDep, SettingsDep
from serving.http.pagination import Cursor, Limit, Page, paginate
from serving.http.paths import KeyId, UserId
from serving.schemas import (
    Email,
    KeyCreate,
    KeyCreated,
    KeyPublic,
    KeyUpdate,
    UserCreate,
    UserPublic,
    UserUpdate,
)

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get("/users")
def list_users(
    _admin: AdminPrincipal,
    session: SessionDep,
    limit: Limit = 20,
    cursor: Cursor = None,
    email: Annotated[Email | None, Query()] = None,
) -> Page[UserPublic]:
    query = select(User)
    if email is not None:
        query = query.where(User.email == email.strip().lower())
    return paginate(session, query, User.id, UserPublic, limit=limit, cursor=cursor)


@router.post(
    "/users",
    status_code=201,
    responses={409: {"description": "a user with that email exists"}},
)
def create_user(
    body: UserCreate, _admin: AdminPrincipal, session: SessionDep, settings: SettingsDep
) -> UserPublic:
    """Create a user, granted GOSHEN_NEW_USER_CREDITS."""
    user = accounts.create_user(
        session,
        email=body.email,
        name=body.name,
        role=body.role,
        credits_micros=settings.new_user_credits_micros,
    )
    session.commit()
    return UserPublic.model_validate(user)


@router.get("/users/{user_id}")
def get_user(user_id: UserId, _admin: AdminPrincipal, session: SessionDep) -> UserPublic:
    return UserPublic.model_validate(accounts.get_user(session, user_id))


@router.patch(
    "/users/{user_id}",
    responses={409: {"description": "an admin cannot disable or demote their own account"}},
)
def update_user(
    user_id: UserId,
    body: UserUpdate,
    admin: AdminPrincipal,
    session: SessionDep,
    principals: PrincipalsDep,
) -> UserPublic:
    """Rename, change role, disable (all keys stop working) and re-enable a user, or mark it
    unmetered (never refused for want of credit)."""
    user = accounts.get_user(session, user_id)
    if user.id == admin.user.id and (body.disabled or body.role not in (None, user.role)):
        raise ConflictError("you cannot disable or demote your own account; ask another admin")
    if body.name is not None:
        user.name = body.name
    if body.role is not None:
        user.role = body.role
    if body.disabled is not None:
        user.disabled_at = (user.disabled_at or utcnow()) if body.disabled else None
    if body.unmetered is not None:
        user.unmetered = body.unmetered
    principals.announce(session, user.id)
    session.commit()
    principals.changed(user.id)  # a disabled or demoted user's keys, now
    return UserPublic.model_validate(user)


@router.post(
    "/users/{user_id}/keys",
    status_code=201,
    responses={409: {"description": "the user is disabled"}},
)
def create_user_key(
    user_id: UserId, body: KeyCreate, _admin: AdminPrincipal, session: SessionDep
) -> KeyCreated:
    """Issue a key for a user; its secret is in this response only."""
    key, plaintext = accounts.issue_key(
        session,
        accounts.get_user(session, user_id),
        name=body.name,
        scopes=body.scopes,
        monthly_spend_cap_micros=body.monthly_spend_cap_micros,
    )
    session.commit()
    return KeyCreated.of(key, plaintext)


@router.get("/keys")
def list_all_keys(
    _admin: AdminPrincipal,
    session: SessionDep,
    limit: Limit = 20,
    cursor: Cursor = None,
    user_id: Annotated[str | None, Query(pattern=id_pattern("usr"))] = None,
) -> Page[KeyPublic]:
    query = select(ApiKey)
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    return paginate(session, query, ApiKey.id, KeyPublic, limit=limit, cursor=cursor)


@router.patch("/keys/{key_id}", responses={409: {"description": "the key is revoked"}})
def update_any_key(
    key_id: KeyId,
    body: KeyUpdate,
    _admin: AdminPrincipal,
    session: SessionDep,
    principals: PrincipalsDep,
) -> KeyPublic:
    """Rename any user's key or set its monthly spend cap (`null` removes it); it applies to
    the key's next request that needs credit held, as for PATCH /v1/keys/{id}."""
    key = accounts.get_key(session, key_id)
    accounts.update_key(key, {field: getattr(body, field) for field in body.model_fields_set})
    principals.announce(session, key.user_id)
    session.commit()
    principals.changed(key.user_id)
    return KeyPublic.model_validate(key)


@router.delete("/keys/{key_id}")
def revoke_any_key(
    key_id: KeyId, _admin: AdminPrincipal, session: SessionDep, principals: PrincipalsDep
) -> KeyPublic:
    key = accounts.revoke_key(accounts.get_key(session, key_id))
    principals.announce(session, key.user_id)
    session.commit()
    principals.changed(key.user_id)
    return KeyPublic.model_validate(key)
