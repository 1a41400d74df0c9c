"""Metering for synchronous requests: one usage event per /predict call, written in batches.

A write per request would put a database round trip on every prediction; instead events queue in
memory and a thread inserts them every FLUSH_SECONDS in one statement, and on shutdown. A process
killed outright loses at most that interval's events.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from goshen.db import session_scope
from goshen.db.models import UsageEvent, utcnow
from goshen.ids import new_id

FLUSH_SECONDS = 0.2
log = logging.getLogger(__name__)
# The Table itself: a mapped class's __table__ is typed as any FROM clause.
_USAGE_EVENTS = UsageEvent.metadata.tables[UsageEvent.__tablename__]


class UsageRecorder:
    """Queues usage events and writes them from a thread of its own."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-recorder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def record(self, **event: Any) -> None:
        """Queue one usage event (the columns of UsageEvent but id); kept as cheap as can be."""
        event["created_at"] = utcnow()
        with self._lock:
            self._pending.append(event)

    def flush(self) -> int:
        """Write what is queued now; how many events that was."""
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            for event in pending:
                event.setdefault("id", new_id("use"))
            try:
                # Core, not the ORM's bulk insert: one executemany, no objects built. A retry
                # after a commit whose answer was lost skips the rows that did land (same ids).
                with session_scope(self.factory) as session:
                    dialect = session.get_bind().dialect.name
                    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
                    statement = insert(_USAGE_EVENTS).on_conflict_do_nothing(index_elements=["id"])
                    session.execute(statement, pending)
            except Exception:
                with self._lock:  # keep them for the next flush rather than lose them
                    self._pending[:0] = pending
                raise
        return len(pending)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            try:
                self.flush()
            except Exception:
                log.exception("could not write usage events; retrying")
