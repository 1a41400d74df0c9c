"""Migrations: up and down on both backends, no drift from the models, safe to run concurrently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from goshen.db import make_engine, migrate
from goshen.db.models import Base

TABLES = {
    "users",
    "api_keys",
    "models",
    "model_versions",
    "jobs",
    "usage_events",
    "credit_ledger",
    "credit_balances",
    "api_key_spend",
    "invoices",
    "predict_credit_chunks",
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


def test_credits_begin_with_the_new_user_grant_for_users_made_before_them(
    empty_database_url: str,
) -> None:
    """An upgrade refuses no one's next job: every user made before 0005 gets the grant once,
    and the balance cache starts at the ledger's sums; a downgrade and upgrade again grant
    nothing twice."""
    migrate.upgrade(empty_database_url, "0004")
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            for user_id, email in (("usr_A", "a@example.com"), ("usr_B", "b@example.com")):
                connection.execute(
                    text(
                        "INSERT INTO users (id, email, name, role, created_at) "
                        "VALUES (:id, :email, '', 'developer', CURRENT_TIMESTAMP)"
                    ),
                    {"id": user_id, "email": email},
                )
        migrate.upgrade(empty_database_url)
        first = _credits(engine)
        migrate.downgrade(empty_database_url, "0004")
        migrate.upgrade(empty_database_url)
        again = _credits(engine)
    finally:
        engine.dispose()
    grants, balances = first
    assert grants == [
        ("usr_A", "signup:usr_A", 10_000_000),
        ("usr_B", "signup:usr_B", 10_000_000),
    ]
    assert balances == [("usr_A", 10_000_000, 0), ("usr_B", 10_000_000, 0)]
    assert [row[::2] for row in again[0]] == [row[::2] for row in grants]  # nothing granted twice
    assert again[1] == balances


def _credits(engine: Engine) -> tuple[list[tuple[str, str, int]], list[tuple[str, int, int]]]:
    with engine.connect() as connection:
        grants = connection.execute(
            text("SELECT user_id, source, amount_micros FROM credit_ledger ORDER BY user_id")
        ).all()
        balances = connection.execute(
            text("SELECT user_id, balance_micros, held_micros FROM credit_balances ORDER BY 1")
        ).all()
    return [tuple(row) for row in grants], [tuple(row) for row in balances]
