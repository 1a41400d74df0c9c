"""A user's own API keys."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from goshen import accounts
from goshen.accounts import Principal
from goshen.db.models import ApiKey
from goshen.errors import PermissionDeniedError
from serving.http.dependencies import KeysPrincipal, PrincipalsDep, SessionDep
from serving.http.pagination import Cursor, Limit, Page, paginate
from serving.http.paths import KeyId
from serving.schemas import KeyCreate, KeyCreated, KeyPublic, KeyUpdate

router = APIRouter(prefix="/v1/keys", tags=["keys"])


def _uncapped(principal: Principal, doing: str) -> None:
    """A key with a monthly spend cap may not make or lift caps: it could otherwise escape its
    own (a new key without one, or PATCH its cap away)."""
    if principal.key.monthly_spend_cap_micros is not None:
        raise PermissionDeniedError(
            f"this API key has a monthly spend cap, so it cannot {doing}; use a key of this "
            "account without a cap"
        )


@router.post("", status_code=201)
def create_key(body: KeyCreate, principal: KeysPrincipal, session: SessionDep) -> KeyCreated:
    """Create a key; its secret is in this response only. A key with a spend cap cannot
    create keys (403)."""
    _uncapped(principal, "create keys")
    key, plaintext = accounts.issue_key(
        session,
        principal.user,
        name=body.name,
        scopes=body.scopes,
        granting=principal.key,
        monthly_spend_cap_micros=body.monthly_spend_cap_micros,
    )
    session.commit()
    return KeyCreated.of(key, plaintext)


@router.get("")
def list_keys(
    principal: KeysPrincipal, session: SessionDep, limit: Limit = 20, cursor: Cursor = None
) -> Page[KeyPublic]:
    query = select(ApiKey).where(ApiKey.user_id == principal.user.id)
    return paginate(session, query, ApiKey.id, KeyPublic, limit=limit, cursor=cursor)


@router.get("/{key_id}")
def get_key(key_id: KeyId, principal: KeysPrincipal, session: SessionDep) -> KeyPublic:
    key = accounts.get_key(session, key_id, owner_id=principal.user.id)
    return KeyPublic.model_validate(key)


@router.patch("/{key_id}")
def update_key(
    key_id: KeyId,
    body: KeyUpdate,
    principal: KeysPrincipal,
    session: SessionDep,
    principals: PrincipalsDep,
) -> KeyPublic:
    """Rename a key or set its monthly spend cap (`null` removes it); a revoked key cannot
    change, and only a key without a cap may set caps (403). A new cap applies to the key's
    next request that needs credit held (a /predict process may spend what it already holds
    for the key, a chunk of at most GOSHEN_PREDICT_CREDIT_CHUNK_MICROS, for up to 30 s)."""
    if "monthly_spend_cap_micros" in body.model_fields_set:
        _uncapped(principal, "set spend caps")
    changes = {field: getattr(body, field) for field in body.model_fields_set}
    key = accounts.update_key(
        accounts.get_key(session, key_id, owner_id=principal.user.id), changes
    )
    principals.announce(session, key.user_id)
    session.commit()
    principals.changed(key.user_id)
    return KeyPublic.model_validate(key)


@router.delete("/{key_id}")
def revoke_key(
    key_id: KeyId, principal: KeysPrincipal, session: SessionDep, principals: PrincipalsDep
) -> KeyPublic:
    """Revoke a key; it stops working at once."""
    key = accounts.revoke_key(accounts.get_key(session, key_id, owner_id=principal.user.id))
    principals.announce(session, key.user_id)
    session.commit()
    principals.changed(key.user_id)
    return KeyPublic.model_validate(key)
