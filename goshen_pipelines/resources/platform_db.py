"""The platform database as a Dagster resource."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from pydantic import Field, PrivateAttr
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from goshen.config import load_settings
from goshen.db import make_engine, make_sessionmaker, migrate, session_scope


class PlatformDatabase(dg.ConfigurableResource["PlatformDatabase"]):
    """The platform database (users, jobs, datasets, training jobs) that assets read and write.

    Left unset, `database_url` is read from GOSHEN_DATABASE_URL when a run starts (not when the code
    location loads), falling back to the embedded SQLite file under GOSHEN_HOME, so runs use the
    same database as the API and workers and the URL's password never shows in Dagster's UI.
    """

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; unset means GOSHEN_DATABASE_URL or the embedded SQLite.",
    )

    _engine: Engine | None = PrivateAttr(default=None)
    _read_engine: Engine | None = PrivateAttr(default=None)

    @property
    def url(self) -> str:
        return self.database_url or load_settings().resolved_database_url

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            engine = make_engine(self.url)
            # A run may come before any API or worker started on this database.
            migrate.upgrade(engine)
            self._engine = engine
        return self._engine

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        for engine in (self._engine, self._read_engine):
            if engine is not None:
                engine.dispose()
        self._engine = self._read_engine = None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back if it raises."""
        with session_scope(make_sessionmaker(self.engine)) as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only session whose queries all see one snapshot of the database (REPEATABLE
        READ on PostgreSQL; a WAL read transaction on SQLite), for rollups and their checks."""
        if self._read_engine is None:
            migrated = self.engine  # a read-only engine cannot migrate
            if migrated.dialect.name == "sqlite":
                self._read_engine = make_engine(self.url, read_only=True)
            else:
                options = {"postgresql_readonly": True, "isolation_level": "REPEATABLE READ"}
                self._read_engine = make_engine(self.url, read_only=True, execution_options=options)
        with session_scope(make_sessionmaker(self._read_engine)) as session:
            yield session
