"""A user's own credit: the ledger, newest first, and the balance, held and available amounts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from goshen.accounts import Principal
from goshen.billing import ledger
from goshen.db.models import CreditLedgerEntry, Role, User
from serving.http.dependencies import ReadSessionDep, require_scope
from serving.http.pagination import Cursor, Limit, Page, page_of_owned
from serving.schemas.billing import CreditBalancePublic, CreditEntryPublic

router = APIRouter(prefix="/v1/credits", tags=["credits"])
UsagePrincipal = Annotated[Principal, Depends(require_scope("usage"))]


def entries_of(
    session: Session, user_id: str, *, limit: int, cursor: str | None
) -> Page[CreditEntryPublic]:
    return page_of_owned(
        session, CreditLedgerEntry, CreditEntryPublic, user_id, limit=limit, cursor=cursor
    )


def balance_of(session: Session, user: User) -> CreditBalancePublic:
    current = ledger.current(session, user.id)
    return CreditBalancePublic(
        balance_micros=current.balance_micros,
        held_micros=current.held_micros,
        available_micros=current.available_micros,
        unmetered=user.unmetered or user.role == Role.admin,
    )


@router.get("")
def list_credit_entries(
    principal: UsagePrincipal, session: ReadSessionDep, limit: Limit = 20, cursor: Cursor = None
) -> Page[CreditEntryPublic]:
    """Your ledger, newest first: grants, holds, captures, releases, adjustments, charges."""
    return entries_of(session, principal.user.id, limit=limit, cursor=cursor)


@router.get("/balance")
def get_credit_balance(principal: UsagePrincipal, session: ReadSessionDep) -> CreditBalancePublic:
    """Your balance, what jobs that have not ended hold, and what is available to new jobs."""
    return balance_of(session, principal.user)
