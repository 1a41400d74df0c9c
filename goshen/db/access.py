"""Tenant isolation in one place: another user's object is reported missing, never forbidden."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, TypeVar

from sqlalchemy import Select, inspect, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import InstrumentedAttribute, Mapped, Session

from goshen.db.models import Base
from goshen.errors import NotFoundError


class Owned(Protocol):
    """A table whose rows each belong to one user (datasets, jobs, keys, ...)."""

    # ClassVar: mypy then accepts the mapped classes themselves, reading `Table.user_id` as a
    # column and `row.user_id` as a str.
    id: ClassVar[Mapped[str]]
    user_id: ClassVar[Mapped[str]]


T = TypeVar("T", bound=Owned)


def get_owned(
    session: Session, model: type[T], object_id: str, user_id: str | None, noun: str
) -> T:
    """The object with this id; with `user_id`, only if that user owns it, else NotFoundError."""
    found = session.get(model, object_id)
    if found is None or (user_id is not None and found.user_id != user_id):
        raise NotFoundError(f"no {noun} with id {object_id}")
    return found


def ids_since(
    id_column: InstrumentedAttribute[str],
    status_column: InstrumentedAttribute[Any],
    status: str,
    cursor: str | None,
    limit: int,
) -> Select[str]:
    """Ids in `status` created after `cursor` (ids sort by creation time), oldest first."""
    return (
        select(id_column)
        .where(id_column > (cursor or ""), status_column == status)
        .order_by(id_column)
        .limit(limit)
    )


def insert_once(
    session: Session, model: type[Base], values: dict[str, Any], keys: tuple[str, ...]
) -> bool:
    """INSERT a row unless one with the same `keys` exists; True when it was added.

    For what must happen once however often its cause runs (at-least-once jobs): a usage event
    per job, a webhook event per (job, type). Python-side column defaults (ids, timestamps) apply.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    primary_key = inspect(model).primary_key[0]
    added = session.scalar(
        insert(model)
        .values(**values)
        .on_conflict_do_nothing(index_elements=list(keys))
        .returning(primary_key)
    )
    return added is not None
