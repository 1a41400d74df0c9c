"""Rows a transaction inserts at its commit, in one multi-row INSERT per table.

For append-only rows that many small steps of one transaction add (a job's events): one statement
at commit instead of one per row. Rows of a transaction that rolls back are never inserted.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session, SessionTransaction

from goshen.db.models import Base

_PENDING = "goshen.pending_rows"


def insert_at_commit(session: Session, model: type[Base], row: dict[str, Any]) -> None:
    """Queue `row` for insertion into `model`'s table when the session's transaction commits."""
    session.info.setdefault(_PENDING, {}).setdefault(model, []).append(row)


def insert_pending(session: Session) -> None:
    """Before commit (installed by `goshen.db.make_sessionmaker`): insert the queued rows."""
    # Rows of one table go in queue order, so ids follow the order they were added in.
    for model, rows in session.info.pop(_PENDING, {}).items():
        session.execute(insert(model), rows)


def drop_pending(session: Session, previous_transaction: SessionTransaction) -> None:
    """After a rollback: a savepoint rolled back leaves the outer transaction's rows to commit."""
    if previous_transaction.parent is None:
        session.info.pop(_PENDING, None)
