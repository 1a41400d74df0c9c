"""The database engine: SQLite settings, integrity rules and UTC timestamps on both backends."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from goshen.db import make_engine, make_sessionmaker, session_scope
from goshen.db.models import ApiKey, User, Worker


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'nested' / 'goshen.db'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_bare_postgresql_urls_use_psycopg3() -> None:
    engine = make_engine("postgresql://postgres@127.0.0.1/goshen")
    assert engine.dialect.driver == "psycopg"


def test_foreign_keys_are_enforced(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(IntegrityError), session_scope(sessions) as session:
        session.add(
            ApiKey(user_id="usr_missing", name="x", prefix="p", secret_hash="h", last4="1234")
        )


def test_emails_are_unique(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as session:
        session.add(User(email="a@example.com", role="developer"))
    with pytest.raises(IntegrityError), session_scope(sessions) as session:
        session.add(User(email="a@example.com", role="developer"))


def test_timestamps_come_back_as_aware_utc(sessions: sessionmaker[Session]) -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    with session_scope(sessions) as session:
        session.add(Worker(id="w1", host="h", pid=1, device_name="cpu", heartbeat_at=moment))
    with sessions() as session:
        stored = session.get(Worker, "w1")
        assert stored is not None
        assert stored.heartbeat_at == moment
        assert stored.heartbeat_at.tzinfo == UTC
        assert stored.started_at.tzinfo == UTC


def test_naive_timestamps_are_refused(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(Exception, match="naive datetime"), session_scope(sessions) as session:
        session.add(
            Worker(id="w2", host="h", pid=1, device_name="cpu", heartbeat_at=datetime(2026, 1, 1))
        )


def test_sessionmaker_keeps_objects_usable_after_commit(database_url: str) -> None:
    engine = make_engine(database_url)
    factory = make_sessionmaker(engine)
    with session_scope(factory) as session:
        user = User(email="b@example.com", role="admin")
        session.add(user)
    assert user.id.startswith("usr_") and user.email == "b@example.com"
    engine.dispose()


def test_a_postgresql_server_that_never_answers_fails_a_connection_within_the_timeout() -> None:
    """Without a connect timeout libpq waits for a server that accepted the connection forever."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        engine = make_engine(f"postgresql://postgres@127.0.0.1:{port}/goshen", timeout=2)
        started = time.monotonic()
        with pytest.raises(OperationalError, match="timeout"):
            engine.connect()
        assert 2 <= time.monotonic() - started < 30  # the bound, and slack for a loaded machine
        engine.dispose()
