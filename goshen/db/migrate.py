"""Alembic migrations, run programmatically so every command can bring the schema up to date."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from goshen.db.engine import make_engine, normalize_url

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Serializes concurrent upgrades (API replicas and workers starting together) on PostgreSQL.
_ADVISORY_LOCK_ID = 0x60_5E_4E_00
# Alembic keeps its migration context in module globals: one migration per process at a time.
_IN_PROCESS = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migrations folder has no revisions"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`; safe to call from many processes at once."""
    _run(url_or_engine, lambda config: command.upgrade(config, revision))


def downgrade(url_or_engine: str | Engine, revision: str) -> None:
    _run(url_or_engine, lambda config: command.downgrade(config, revision))


def _run(url_or_engine: str | Engine, action: Callable[[Config], None]) -> None:
    with _IN_PROCESS:
        _run_alone(url_or_engine, action)


def _run_alone(url_or_engine: str | Engine, action: Callable[[Config], None]) -> None:
    engine = url_or_engine if isinstance(url_or_engine, Engine) else make_engine(url_or_engine)
    postgres = normalize_url(engine.url).get_backend_name() == "postgresql"
    try:
        with engine.connect() as connection:
            if postgres:
                connection.exec_driver_sql(f"SELECT pg_advisory_lock({_ADVISORY_LOCK_ID})")
                connection.commit()
            else:
                # SQLite's DDL is not transactional to Alembic, which then commits each revision
                # on its own and keeps the version it read at the start in memory: another
                # process could step in between two revisions. One transaction, begun here with
                # the engine's BEGIN IMMEDIATE, holds the write lock across every revision.
                connection.begin()
            try:
                action(alembic_config(connection))
                connection.commit()
            finally:
                if postgres:
                    connection.rollback()
                    connection.exec_driver_sql(f"SELECT pg_advisory_unlock({_ADVISORY_LOCK_ID})")
                    connection.commit()
    finally:
        if engine is not url_or_engine:
            engine.dispose()
