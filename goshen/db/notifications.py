"""PostgreSQL LISTEN/NOTIFY: wake workers and waiting clients at once instead of on their next poll.

Notifications are an accelerator, never the source of truth: every listener also polls, so a
lost notification (a dropped connection, SQLite, a restart) only delays work by a poll interval.
NOTIFY is transactional: a notification sent inside a transaction is delivered at its commit.
"""

from __future__ import annotations

import logging
import time

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, SessionTransaction

JOBS_CHANNEL = "goshen_jobs"  # a job became runnable
JOB_EVENTS_CHANNEL = "goshen_job_events"  # a job has new events; the payload is its id
WEBHOOKS_CHANNEL = "goshen_webhooks"  # a webhook delivery is due
KEYS_CHANNEL = "goshen_keys"  # a key was revoked or a user changed; the payload is the user id
RECONNECT_SECONDS = 2.0

log = logging.getLogger(__name__)


def is_postgres(database_url: str) -> bool:
    return make_url(database_url).get_backend_name() == "postgresql"


_PENDING = "goshen.notifications"


def notify(session: Session, channel: str, payload: str = "") -> None:
    """Notify `channel` when the session's transaction commits; repeats are sent once."""
    if session.get_bind().dialect.name == "postgresql":
        session.info.setdefault(_PENDING, set()).add((channel, payload))


# Sends the notifications of `:channels` and `:payloads` (two text arrays, paired in order).
SEND = (
    "SELECT pg_notify(channel, payload) FROM unnest("
    "CAST(:channels AS text[]), CAST(:payloads AS text[])) AS t(channel, payload)"
)


def take_pending(session: Session) -> dict[str, list[str]] | None:
    """What `notify` queued in the session's transaction, now the caller's to send with SEND
    (goshen.db.pending_rows sends them in the statement that inserts the pending rows)."""
    pending = sorted(session.info.pop(_PENDING, ()))
    if not pending:
        return None
    channels, payloads = zip(*pending, strict=True)
    return {"channels": list(channels), "payloads": list(payloads)}


def send_pending(session: Session) -> None:
    """Before commit (installed by `goshen.db.make_sessionmaker`): send what `notify` queued."""
    # One statement for a transaction's notifications, however many; delivered at commit.
    pending = take_pending(session)
    if pending is not None:
        session.execute(text(SEND), pending)


def drop_pending(session: Session, previous_transaction: SessionTransaction) -> None:
    """After a rollback (installed with `send_pending`): nothing queued is sent."""
    # A savepoint rolled back leaves the outer transaction's notifications to commit with it.
    if previous_transaction.parent is None:
        session.info.pop(_PENDING, None)


class Listener:
    """A LISTEN connection on PostgreSQL channels; on SQLite `wait` simply sleeps.

    Not thread-safe: one thread waits on it. A broken connection is reopened on the next wait.
    """

    def __init__(self, database_url: str, channels: tuple[str, ...]) -> None:
        self.channels = channels
        self._conninfo = _libpq(database_url) if is_postgres(database_url) else None
        self._connection: psycopg.Connection | None = None
        self._retry_at = 0.0
        # Counts the connections made: notifications sent between two of them were missed.
        self.connection_number = 0

    def wait(self, timeout: float) -> list[tuple[str, str]]:
        """(channel, payload) of the notifications that arrive within `timeout` seconds."""
        connection = self._connect()
        if connection is None:
            time.sleep(timeout)
            return []
        try:
            arrived = list(connection.notifies(timeout=timeout, stop_after=1))
            # Drain what else is already waiting, without blocking again.
            arrived += list(connection.notifies(timeout=0))
        except psycopg.Error as exc:
            log.warning("LISTEN connection lost (%s); polling until it is back", exc)
            self.close()
            return []
        return [(notification.channel, notification.payload) for notification in arrived]

    @property
    def connected(self) -> bool:
        """Whether notifications are being received now (False on SQLite and while reconnecting)."""
        return self._connection is not None and not self._connection.closed

    @property
    def session(self) -> int | None:
        """Which connection receives notifications now (None: none does). A change means some
        may have been missed in between."""
        return self.connection_number if self.connected else None

    def _connect(self) -> psycopg.Connection | None:
        if self._conninfo is None:
            return None
        if self._connection is not None and not self._connection.closed:
            return self._connection
        if time.monotonic() < self._retry_at:
            return None
        try:
            # TCP keepalives: a connection that died silently (a half-open socket) is noticed
            # within about 25 s instead of never, so `connected` does not claim a dead one.
            connection = psycopg.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=5,
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            )
            for channel in self.channels:
                connection.execute(f'LISTEN "{channel}"')
        except psycopg.Error as exc:
            log.warning("cannot LISTEN on PostgreSQL (%s); polling meanwhile", exc)
            self._retry_at = time.monotonic() + RECONNECT_SECONDS
            return None
        self._connection = connection
        self.connection_number += 1
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _libpq(database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)
