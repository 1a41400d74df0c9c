"""Cursor pagination: ids sort by creation time, so the cursor is the last id of a page."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from goshen.db.access import Owned
from goshen.ids import id_pattern

MAX_LIMIT = 100
DEFAULT_LIMIT = 20

T = TypeVar("T", bound=BaseModel)


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool
    next_cursor: str | None


Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"page size, at most {MAX_LIMIT}")]
Cursor = Annotated[
    str | None,
    Query(pattern=id_pattern(), description="`next_cursor` of the previous page"),
]


def paginate(
    session: Session,
    query: Select[Any],
    id_column: InstrumentedAttribute[str],
    public: type[T],
    *,
    limit: int,
    cursor: str | None,
    render: Callable[[Sequence[Any]], list[T]] | None = None,
) -> Page[T]:
    """Newest first; fetches one extra row to know whether another page follows.

    `render` turns a page of rows into public bodies when `public.model_validate` cannot.
    """
    if cursor is not None:
        query = query.where(id_column < cursor)
    rows = session.scalars(query.order_by(id_column.desc()).limit(limit + 1)).all()
    page = rows[:limit]
    items = render(page) if render else [public.model_validate(row) for row in page]
    has_more = len(rows) > limit
    next_cursor = rows[limit - 1].id if has_more else None
    return Page[public](data=items, has_more=has_more, next_cursor=next_cursor)  # type: ignore[valid-type]  # pydantic parametrizes at run time


def page_of_owned(
    session: Session,
    table: type[Owned],
    public: type[T],
    user_id: str,
    *,
    limit: int,
    cursor: str | None,
) -> Page[T]:
    """The caller's own rows of `table`, newest first, as `public` bodies."""
    query = select(table).where(table.user_id == user_id)
    return paginate(session, query, table.id, public, limit=limit, cursor=cursor)
