"""Engines and sessions for the platform database, on SQLite or PostgreSQL."""

from __future__ import annotations

import math
import sqlite3
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from goshen.db import notifications, pending_rows

SQLITE_BUSY_TIMEOUT_MS = 30_000
# A pooled PostgreSQL connection back in the pool for less than this is not pinged before its
# next use (HikariCP's aliveBypassWindowMs, 500 ms there too): see _ping_when_idle.
PING_AFTER_IDLE_SECONDS = 0.5
# GOSHEN_DEPENDENCY_TIMEOUT_SECONDS' default, for callers without settings at hand.
CONNECT_TIMEOUT_SECONDS = 10.0


def normalize_url(url: str | URL) -> URL:
    """Use psycopg 3 for bare postgresql:// URLs (SQLAlchemy would look for psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(
    url: str | URL,
    *,
    read_only: bool = False,
    timeout: float = CONNECT_TIMEOUT_SECONDS,
    **kwargs: object,
) -> Engine:
    """An engine with Goshen's connection settings for the URL's backend.

    `read_only` engines serve the hot read paths (authentication, event streams): on SQLite
    their transactions take no write lock, so readers never queue behind each other or behind
    writers. A write through one fails at once on either backend. On PostgreSQL, a server that
    does not answer fails a connection within about `timeout` seconds (see postgres_connect_args).
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, read_only=read_only, **kwargs)
    if read_only:
        # psycopg then opens each transaction READ ONLY: a write fails there too.
        kwargs.setdefault("execution_options", {"postgresql_readonly": True})
    engine = create_engine(
        parsed, pool_pre_ping=True, connect_args=postgres_connect_args(timeout), **kwargs
    )
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection before its use (pool_pre_ping, which replaces a connection the
    server dropped, say in a restart) only when it sat in the pool PING_AFTER_IDLE_SECONDS or
    more: one that was in use a moment ago is as alive as a ping would show, and a ping is a
    round trip on every transaction of a busy worker or API process. A connection dropped
    within that window fails its transaction, which the caller retries as any other error."""
    returned_at: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
    ping = engine.dialect.do_ping

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        if dbapi_connection is not None:
            returned_at[dbapi_connection] = time.monotonic()

    def do_ping(dbapi_connection: Any) -> bool:
        idle = time.monotonic() - returned_at.get(dbapi_connection, -math.inf)
        return True if idle < PING_AFTER_IDLE_SECONDS else ping(dbapi_connection)

    engine.dialect.do_ping = do_ping  # type: ignore[method-assign]


def postgres_connect_args(timeout: float) -> dict[str, int]:
    """libpq settings that keep a PostgreSQL server that is down from holding a caller for long.

    Connecting gives up after `timeout` (libpq counts whole seconds, 2 at least). A server that
    stops acknowledging mid-query (a crashed host, a dropped network) is given up within about
    twice `timeout`, by TCP keepalives and TCP_USER_TIMEOUT, instead of the kernel's
    retransmissions for about 15 minutes. A long query on a server that answers is not cut
    short: its kernel acknowledges the keepalives.
    """
    seconds = max(2, math.ceil(timeout))
    return {
        "connect_timeout": seconds,
        "keepalives": 1,
        "keepalives_idle": seconds,
        "keepalives_interval": max(1, seconds // 3),
        "keepalives_count": 3,
        "tcp_user_timeout": seconds * 1000,
    }


def _sqlite_engine(url: URL, *, read_only: bool, **kwargs: object) -> Engine:
    if url.database and url.database != ":memory:":
        from pathlib import Path

        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        if read_only:
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # IMMEDIATE takes the write lock up front: a deferred transaction that later writes can
        # fail at once with SQLITE_BUSY when another process committed in between. A read-only
        # engine's transactions only read, so they take the snapshot WAL gives readers.
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects after commit, and run the platform's commit hooks:
    rows queued with `insert_at_commit`, then notifications queued with `notify`."""
    factory = sessionmaker(engine, expire_on_commit=False)
    event.listen(factory, "before_commit", pending_rows.insert_pending)
    event.listen(factory, "before_commit", notifications.send_pending)
    event.listen(factory, "after_soft_rollback", pending_rows.drop_pending)
    event.listen(factory, "after_soft_rollback", notifications.drop_pending)
    return factory


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session
