"""What every table shares: the declarative Base, UTC timestamps, JSON columns, ids and enums."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    DateTime,
    Dialect,
    MetaData,
    String,
    TypeDecorator,
    literal_column,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from goshen.ids import new_id

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on PostgreSQL and SQLite alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


def id_column(kind: str) -> Mapped[str]:
    """A primary key that defaults to a new id with the `kind` prefix (`usr_...`)."""
    return mapped_column(String(40), primary_key=True, default=lambda: new_id(kind))


def created_at_column() -> Mapped[datetime]:
    """When the row was made, set on insert."""
    return mapped_column(default=utcnow)


def in_sql(value: StrEnum) -> ColumnElement[str]:
    """An enum constant written into the statement's text rather than sent as a parameter, for
    the columns of partial indexes (`status = 'queued'`): the plan PostgreSQL keeps for a
    statement that psycopg prepared (its generic plan) can use such an index only when the
    predicate's value is in the text."""
    return literal_column(f"'{value.value}'", String)


def enum_type(enum: type[StrEnum]) -> String:
    """Enums are plain strings in the database so new values need no ALTER TYPE."""
    return String(max(len(member.value) for member in enum) + 8)
