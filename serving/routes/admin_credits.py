"""Admin routes for a user's credit: grant or adjust (Idempotency-Key honoured), and read."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from goshen import accounts
from goshen.billing import ledger
from goshen.db.models import CreditLedgerEntry, User, utcnow
from goshen.errors import InvalidInputError
from serving.http.dependencies import AdminPrincipal, ReadSessionDep, SessionDep
from serving.http.headers import IDEMPOTENCY_KEY_PATTERN
from serving.http.pagination import Cursor, Limit, Page
from serving.http.paths import UserId
from serving.routes.credits import balance_of, entries_of
from serving.schemas.billing import CreditBalancePublic, CreditCreate, CreditEntryPublic

router = APIRouter(prefix="/v1/admin/users", tags=["admin"])
LONGEST_EXPIRY = timedelta(days=100 * 365)


@router.post(
    "/{user_id}/credits",
    status_code=201,
    responses={409: {"description": "an adjustment would take available credit below zero"}},
)
def add_credit_entry(
    user_id: UserId,
    body: CreditCreate,
    response: Response,
    admin: AdminPrincipal,
    session: SessionDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="a replay of the same key and body returns the entry it made",
        ),
    ] = None,
) -> CreditEntryPublic:
    """Grant credit (optionally expiring) or adjust a balance, with a reason."""
    user = accounts.get_user(session, user_id)
    now = utcnow()
    if body.expires_at is not None and not now < body.expires_at < now + LONGEST_EXPIRY:
        raise InvalidInputError(
            "expires_at must be in the future, and within 100 years", field="expires_at"
        )
    key = idempotency_key or uuid.uuid4().hex
    source = f"admin:{admin.user.id}:{key}"
    # One of this admin's credit requests at a time (SQLite's write transactions are serial
    # already): a key sent twice at once finds the entry its first request made.
    session.execute(select(User.id).where(User.id == admin.user.id).with_for_update(key_share=True))
    earlier = _earlier(session, source, user.id, body)
    if earlier is None and body.kind == "grant":
        earlier, added = ledger.grant(
            session,
            user_id=user.id,
            source=source,
            amount_micros=body.amount_micros,
            expires_at=body.expires_at,
            reason=body.reason,
            created_by=admin.user.id,
        )
    elif earlier is None:
        earlier, added = ledger.adjust(
            session,
            user_id=user.id,
            source=source,
            amount_micros=body.amount_micros,
            reason=body.reason,
            created_by=admin.user.id,
        )
    else:
        added = False
    session.commit()
    if not added:
        response.headers["Idempotent-Replayed"] = "true"
    return CreditEntryPublic.model_validate(earlier)


def _earlier(
    session: Session, source: str, user_id: str, body: CreditCreate
) -> CreditLedgerEntry | None:
    """The entry this Idempotency-Key made; 422 when it was made by another request."""
    made = session.scalar(select(CreditLedgerEntry).where(CreditLedgerEntry.source == source))
    if made is None:
        return None
    same = (made.user_id, made.kind, made.amount_micros, made.expires_at, made.reason) == (
        user_id,
        body.kind,
        body.amount_micros,
        body.expires_at,
        body.reason,
    )
    if not same:
        raise InvalidInputError(
            "this Idempotency-Key was used with a different request; send a new key for a new "
            "request",
            field="Idempotency-Key",
        )
    return made


@router.get("/{user_id}/credits")
def list_user_credit_entries(
    user_id: UserId,
    _admin: AdminPrincipal,
    session: ReadSessionDep,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Page[CreditEntryPublic]:
    """A user's ledger, newest first."""
    accounts.get_user(session, user_id)
    return entries_of(session, user_id, limit=limit, cursor=cursor)


@router.get("/{user_id}/credits/balance")
def get_user_credit_balance(
    user_id: UserId, _admin: AdminPrincipal, session: ReadSessionDep
) -> CreditBalancePublic:
    """A user's balance, held and available credit."""
    return balance_of(session, accounts.get_user(session, user_id))
