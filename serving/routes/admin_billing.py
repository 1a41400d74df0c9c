"""Admin routes over every user's billing: usage grouped by user, model or day, and invoices."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from goshen.billing import usage
from goshen.billing.usage import GroupBy
from goshen.db.models import Invoice
from goshen.ids import id_pattern
from serving.http.dependencies import AdminPrincipal, ReadSessionDep, StoreDep
from serving.http.pagination import Limit, Page
from serving.routes.invoices import InvoiceCursor, StatusFilter, invoice_page
from serving.routes.usage import RangeEnd, RangeStart
from serving.schemas.billing import InvoicePublic
from serving.schemas.usage import AdminUsageGroup, AdminUsagePublic, UsageTotals

router = APIRouter(prefix="/v1/admin", tags=["admin"])
# A range spans at most 367 UTC days, so day groups always fit under the cap.
MAX_GROUPS = 1000
UserFilter = Annotated[str | None, Query(pattern=id_pattern("usr"), description="only this user's")]


@router.get("/usage")
def get_all_usage(
    _admin: AdminPrincipal,
    session: ReadSessionDep,
    group_by: Annotated[GroupBy, Query(description="one group per user, model or UTC day")],
    start: RangeStart = None,
    end: RangeEnd = None,
    user_id: UserFilter = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_GROUPS, description=f"groups to answer, at most {MAX_GROUPS}")
    ] = 100,
) -> AdminUsagePublic:
    """Every user's usage over a range (by default this month so far), grouped: days oldest
    first, users and models highest cost first, the first `limit` of them; `totals` count
    every event. A capped list, not pages: each page would sum the range again, and what
    admins read is the top spenders and a daily series (the `usage_daily` rollups hold
    the rest)."""
    span = usage.usage_range(start, end)
    groups = usage.grouped(session, span, group_by, user_id=user_id, limit=limit + 1)
    return AdminUsagePublic(
        start=span.start,
        end=span.end,
        group_by=group_by,
        totals=UsageTotals.of(usage.totals(session, span, user_id)),
        groups=[AdminUsageGroup.of_group(group) for group in groups[:limit]],
        has_more=len(groups) > limit,
    )


@router.get("/invoices")
def list_all_invoices(
    _admin: AdminPrincipal,
    session: ReadSessionDep,
    store: StoreDep,
    limit: Limit = 20,
    cursor: InvoiceCursor = None,
    user_id: UserFilter = None,
    month: Annotated[
        str | None,
        Query(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="only this UTC month, `YYYY-MM`"),
    ] = None,
    status: StatusFilter = None,
) -> Page[InvoicePublic]:
    """Every user's invoices, newest month first."""
    query = select(Invoice)
    if user_id is not None:
        query = query.where(Invoice.user_id == user_id)
    if month is not None:
        query = query.where(Invoice.month == month)
    if status is not None:
        query = query.where(Invoice.status == status)
    return invoice_page(session, query, store, limit=limit, cursor=cursor, owner=None)
