"""A user's own invoices, newest month first, with signed expiring links to their HTML and
Parquet. The `invoices` asset writes them; these routes only read."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import Select, select, tuple_
from sqlalchemy.orm import Session

from goshen.accounts import Principal
from goshen.db import access
from goshen.db.models import Invoice, InvoiceStatus, utcnow
from goshen.errors import InvalidInputError
from goshen.ids import id_pattern
from goshen.storage import ArtifactStore
from serving.http.dependencies import ReadSessionDep, StoreDep, require_scope
from serving.http.pagination import Limit, Page
from serving.http.paths import InvoiceId
from serving.schemas.billing import InvoicePublic

router = APIRouter(prefix="/v1/invoices", tags=["invoices"])
UsagePrincipal = Annotated[Principal, Depends(require_scope("usage"))]
InvoiceCursor = Annotated[
    str | None,
    Query(pattern=id_pattern("inv"), description="`next_cursor` of the previous page"),
]
StatusFilter = Annotated[InvoiceStatus | None, Query(description="only invoices in this status")]


def render_invoice(invoice: Invoice, store: ArtifactStore) -> InvoicePublic:
    """The invoice with fresh signed links to the files the asset has written."""
    expires_at = utcnow() + timedelta(seconds=store.default_ttl_seconds)
    html = store.signed_url(invoice.html_key) if invoice.html_key else None
    parquet = store.signed_url(invoice.parquet_key) if invoice.parquet_key else None
    return InvoicePublic(
        id=invoice.id,
        user_id=invoice.user_id,
        month=invoice.month,
        status=invoice.status,
        opening_balance_micros=invoice.opening_balance_micros,
        closing_balance_micros=invoice.closing_balance_micros,
        inference_micros=invoice.inference_micros,
        training_micros=invoice.training_micros,
        storage_micros=invoice.storage_micros,
        total_micros=invoice.total_micros,
        credits_added_micros=invoice.credits_added_micros,
        line_count=invoice.line_count,
        html_url=html,
        parquet_url=parquet,
        urls_expire_at=expires_at,
        created_at=invoice.created_at,
        updated_at=invoice.updated_at,
        finalized_at=invoice.finalized_at,
    )


def invoice_page(
    session: Session,
    query: Select[Any],
    store: ArtifactStore,
    *,
    limit: int,
    cursor: str | None,
    owner: str | None,
) -> Page[InvoicePublic]:
    """Newest month first, then newest id (ids sort by creation): one more row than `limit`
    says whether another page follows. `cursor`, the last invoice of the previous page, must
    be `owner`'s when one is given."""
    if cursor is not None:
        found = select(Invoice.month).where(Invoice.id == cursor)
        if owner is not None:
            found = found.where(Invoice.user_id == owner)
        month = session.scalar(found)
        if month is None:
            raise InvalidInputError(
                f"no invoice {cursor} to continue after: send the `next_cursor` of a page, or "
                "none for the first page",
                field="cursor",
            )
        query = query.where(tuple_(Invoice.month, Invoice.id) < tuple_(month, cursor))
    ordered = query.order_by(Invoice.month.desc(), Invoice.id.desc()).limit(limit + 1)
    rows = session.scalars(ordered).all()
    has_more = len(rows) > limit
    return Page[InvoicePublic](
        data=[render_invoice(invoice, store) for invoice in rows[:limit]],
        has_more=has_more,
        next_cursor=rows[limit - 1].id if has_more else None,
    )


@router.get("")
def list_invoices(
    principal: UsagePrincipal,
    session: ReadSessionDep,
    store: StoreDep,
    limit: Limit = 20,
    cursor: InvoiceCursor = None,
    status: StatusFilter = None,
) -> Page[InvoicePublic]:
    """Your invoices, newest month first: drafts until the grace period after their month,
    then finalized."""
    query = select(Invoice).where(Invoice.user_id == principal.user.id)
    if status is not None:
        query = query.where(Invoice.status == status)
    owner = principal.user.id
    return invoice_page(session, query, store, limit=limit, cursor=cursor, owner=owner)


@router.get("/{invoice_id}")
def get_invoice(
    invoice_id: InvoiceId, principal: UsagePrincipal, session: ReadSessionDep, store: StoreDep
) -> InvoicePublic:
    """One of your invoices, with links to its HTML and Parquet that expire."""
    invoice = access.get_owned(session, Invoice, invoice_id, principal.user.id, "invoice")
    return render_invoice(invoice, store)
