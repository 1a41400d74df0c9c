"""Credit captured, told to whoever watches a sessionmaker once the transaction that captured it
commits: the API and the worker count it in their Prometheus metrics.

`ledger.settle` notes each capture it writes on its session (`noted`); a capture rolled back is
never told, and a capture in an unwatched session (a Dagster run) is simply dropped with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

log = logging.getLogger(__name__)
_PENDING = "goshen.captures"
# What a capture's ledger source says it paid for: the part before its first colon.
SOURCES = ("job", "predict", "training")
OTHER = "other"

# Told (source, micro-credits) for each capture, after its transaction committed.
CaptureListener = Callable[[str, int], None]


def noted(session: Session, source: str, micros: int) -> None:
    """Note `micros` captured under the ledger `source` in `session`'s transaction."""
    kind = source.partition(":")[0]
    session.info.setdefault(_PENDING, []).append((kind if kind in SOURCES else OTHER, micros))


def watch_captures(factory: sessionmaker[Session], listener: CaptureListener) -> None:
    """Tell `listener` every capture that commits through sessions of `factory`."""

    def committed(session: Session) -> None:
        for source, micros in session.info.pop(_PENDING, ()):
            try:
                listener(source, micros)
            except Exception:  # counting must never fail what was committed
                log.exception("could not count a credit capture")

    def rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
        # A savepoint rolled back leaves the outer transaction's captures to commit with it.
        if previous_transaction.parent is None:
            session.info.pop(_PENDING, None)

    event.listen(factory, "after_commit", committed)
    event.listen(factory, "after_soft_rollback", rolled_back)
