"""Metering for synchronous requests: one usage event per /predict call, written in batches.

A write per request would put a database round trip on every prediction; instead events queue in
memory and a thread inserts them every FLUSH_SECONDS in one statement, and on shutdown. A process
killed outright loses at most that interval's events.

The thread holds the GIL, which the event loop serving /predict needs, for as long as it spends
in Python: on PostgreSQL the batch therefore goes as one JSON array, encoded by orjson (in C),
that the server turns back into rows (goshen.db.pending_rows.insert_json_rows). That costs the
API process a fraction of what COPY cost (psycopg formats each row of a COPY in Python: 9 % of
the loaded API's GIL time, bench/predict_vs_mlflow.py). ON CONFLICT DO NOTHING on the id makes a
retry of rows that did land (a commit whose answer was lost) write only the ones that did not.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import orjson
from sqlalchemy.orm import Session, sessionmaker

from goshen.db import session_scope
from goshen.db.models import UsageEvent, utcnow
from goshen.db.pending_rows import insert_json_rows, insert_rows
from goshen.ids import new_id

FLUSH_SECONDS = 0.2
log = logging.getLogger(__name__)


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
                with session_scope(self.factory) as session:
                    _write(session, pending)
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


def _write(session: Session, events: list[dict[str, Any]]) -> None:
    """Insert the events; those whose ids are already in the table (a retry) are skipped."""
    columns = tuple(events[0])
    if session.get_bind().dialect.name == "postgresql" and all(
        tuple(event) == columns for event in events
    ):
        # Events hold ids, text, numbers, None and aware datetimes, which orjson writes as
        # PostgreSQL reads them (ISO 8601 with the offset); `seconds` is measured, never NaN.
        encoded = orjson.dumps(events)
        insert_json_rows(session, UsageEvent, columns, encoded, skip_conflicts_on=("id",))
        return
    insert_rows(session, UsageEvent, events, skip_conflicts_on=("id",))
