"""Rows a transaction inserts at its commit, in one multi-row INSERT per table.

For append-only rows that many small steps of one transaction add (a job's events): one statement
at commit instead of one per row. Rows of a transaction that rolls back are never inserted.

`insert_rows` is that one statement. On PostgreSQL the rows travel as one JSON parameter that
`jsonb_to_recordset` turns back into typed rows, so the statement's text depends only on the
table and its columns: it is built once per process and the server plans it once, however many
rows come (the driver's executemany sends a statement per row; a multi-row VALUES list is a new
statement for every row count). On SQLite it is an executemany.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from enum import Enum
from functools import cache
from typing import Any

from sqlalchemy import Table, TextClause, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.orm import Session, SessionTransaction

from goshen.db import notifications as pg_notifications
from goshen.db.models import Base

_PENDING = "goshen.pending_rows"
_POSTGRESQL = PGDialect()  # type: ignore[no-untyped-call]


def insert_at_commit(session: Session, model: type[Base], row: dict[str, Any]) -> None:
    """Queue `row` for insertion into `model`'s table when the session's transaction commits."""
    session.info.setdefault(_PENDING, {}).setdefault(model, []).append(row)


def insert_pending(session: Session) -> None:
    """Before commit (installed by `goshen.db.make_sessionmaker`, before
    notifications.send_pending): insert the queued rows. On PostgreSQL the last table's
    statement also sends the transaction's notifications (one round trip fewer per commit);
    not at a savepoint's release, where a failed insert may be caught and the transaction go
    on: its notifications then stay queued for send_pending."""
    # Rows of one table go in queue order, so ids follow the order they were added in.
    pending = list(session.info.pop(_PENDING, {}).items())
    merge = session.get_bind().dialect.name == "postgresql" and not session.in_nested_transaction()
    for number, (model, rows) in enumerate(pending):
        if merge and number == len(pending) - 1:
            sending = pg_notifications.take_pending(session)
            insert_rows(session, model, rows, notifications=sending)
        else:
            insert_rows(session, model, rows)


def drop_pending(session: Session, previous_transaction: SessionTransaction) -> None:
    """After a rollback: a savepoint rolled back leaves the outer transaction's rows to commit."""
    if previous_transaction.parent is None:
        session.info.pop(_PENDING, None)


def insert_rows(
    session: Session,
    model: type[Base],
    rows: Sequence[dict[str, Any]],
    *,
    skip_conflicts_on: tuple[str, ...] | None = None,
    notifications: dict[str, list[str]] | None = None,
) -> None:
    """Insert `rows` (dicts with the same keys) into `model`'s table in one statement, in order
    (serial ids follow the rows' order). With `skip_conflicts_on`, a row that would repeat a
    unique key on those columns is skipped (ON CONFLICT DO NOTHING). Python-side column
    defaults are not applied: a row gives every column that has one. `notifications`
    (PostgreSQL: goshen.db.notifications.take_pending) are sent by the same statement.

    On PostgreSQL the values travel as JSON and PostgreSQL reads them by the columns' types, so
    each must be what JSON carries for that type: a None in a JSON column is SQL NULL (not JSON
    null), a float is refused by an integer column, and NaN and infinities are refused."""
    keys = set(rows[0]) if rows else set()
    columns = tuple(rows[0]) if rows else ()
    dialect = session.get_bind().dialect.name
    alike = all(row.keys() == keys for row in rows)
    if notifications is not None and (not rows or not alike):
        session.execute(text(pg_notifications.SEND), notifications)
        notifications = None
    if not rows:
        return
    if dialect != "postgresql" or not alike:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        many = insert(model)
        if skip_conflicts_on is not None:
            many = many.on_conflict_do_nothing(index_elements=list(skip_conflicts_on))
        session.execute(many, list(rows))
        return
    plain = json.dumps([_plain(row, columns) for row in rows], allow_nan=False)
    insert_json_rows(
        session,
        model,
        columns,
        plain,
        skip_conflicts_on=skip_conflicts_on,
        notifications=notifications,
    )


def insert_json_rows(
    session: Session,
    model: type[Base],
    columns: tuple[str, ...],
    rows: str | bytes,
    *,
    skip_conflicts_on: tuple[str, ...] | None = None,
    notifications: dict[str, list[str]] | None = None,
) -> None:
    """PostgreSQL: insert rows given as a JSON array of objects with the keys `columns` (encoded
    by the caller, who vouches for what `insert_rows`' docstring asks of each value), in
    order, in one statement; the rest as `insert_rows`."""
    table = model.__table__
    assert isinstance(table, Table)
    statement = _recordset_insert(table, columns, skip_conflicts_on, notifications is not None)
    text_rows = rows.decode() if isinstance(rows, bytes) else rows
    session.execute(statement, {"rows": text_rows, **(notifications or {})})


@cache
def _recordset_insert(
    table: Table,
    columns: tuple[str, ...],
    skip_conflicts_on: tuple[str, ...] | None,
    notifies: bool,
) -> TextClause:
    missing = [
        column.name
        for column in table.columns
        if column.default is not None and column.server_default is None
        if column.name not in columns
    ]
    if missing:
        raise ValueError(f"rows for {table.name} lack columns with Python defaults: {missing}")
    types = ", ".join(
        f'"{name}" {table.columns[name].type.compile(dialect=_POSTGRESQL)}' for name in columns
    )
    names = ", ".join(f'"{name}"' for name in columns)
    conflict = ""
    if skip_conflicts_on is not None:
        keys = ", ".join(f'"{name}"' for name in skip_conflicts_on)
        conflict = f" ON CONFLICT ({keys}) DO NOTHING"
    # Names from the table's own metadata, never from input.
    insert = (
        f'INSERT INTO "{table.name}" ({names}) SELECT {names} FROM ROWS FROM '  # noqa: S608
        f"(jsonb_to_recordset(CAST(:rows AS jsonb)) AS ({types})) WITH ORDINALITY "
        f"AS r({names}, ordinality) ORDER BY ordinality{conflict}"
    )
    if notifies:  # a data-modifying WITH runs once, whether or not its rows are read
        return text(f"WITH inserted AS ({insert}) {pg_notifications.SEND}")
    return text(insert)


def _plain(row: dict[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    """`row` as JSON can carry it: timestamps in ISO 8601, enums by value."""
    return {name: _json_value(row[name]) for name in columns}


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # as UTCDateTime refuses them
            raise ValueError("naive datetime given; use datetime.now(UTC)")
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value
