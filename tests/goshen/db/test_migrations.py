"""Migrations: up and down on both backends, no drift from the models, safe to run concurrently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from goshen.db import make_engine, migrate
from goshen.db.models import Base

TABLES = {
    "users",
    "api_keys",
    "models",
    "jobs",
    "usage_events",
    "credit_ledger",
    "datasets",
    "training_jobs",
    "webhook_deliveries",
    "workers",
    "job_events",
}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_creates_every_table_and_downgrade_removes_them(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    assert _tables(empty_database_url) == TABLES
    migrate.downgrade(empty_database_url, "base")
    assert _tables(empty_database_url) == set()
    migrate.upgrade(empty_database_url)
    assert _tables(empty_database_url) == TABLES


def test_migrations_match_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        assert migrate.current_revision(engine) == migrate.head_revision()
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_concurrent_upgrades_leave_one_schema(empty_database_url: str, tmp_path: Path) -> None:
    """API replicas and workers start together and each upgrades the schema: all must succeed."""
    env = {**os.environ, "GOSHEN_DATABASE_URL": empty_database_url, "GOSHEN_HOME": str(tmp_path)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "goshen_launcher.cli", "db", "upgrade"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert _tables(empty_database_url) == TABLES
