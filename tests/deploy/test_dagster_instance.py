"""deploy/dagster.yaml is a valid production instance that really runs on PostgreSQL."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._core.launcher import DefaultRunLauncher
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_postgres import PostgresRunStorage
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from tests.fixtures.databases import Postgres

PRODUCTION_INSTANCE = Path(__file__).resolve().parents[2] / "deploy" / "dagster.yaml"


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    shutil.copy(PRODUCTION_INSTANCE, tmp_path / "dagster.yaml")
    return tmp_path


@pytest.fixture
def dagster_database(postgres: Postgres | None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh PostgreSQL database, named to the instance through the DAGSTER_PG_* variables."""
    if postgres is None:
        pytest.skip("PostgreSQL is not reachable (set GOSHEN_TEST_DATABASE_URL)")
    name = f"dagster_test_{secrets.token_hex(6)}"
    postgres.execute(f'CREATE DATABASE "{name}"')
    server = make_url(postgres.admin_url)
    monkeypatch.setenv("DAGSTER_PG_HOST", server.host or "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_PORT", str(server.port or 5432))
    monkeypatch.setenv("DAGSTER_PG_DB", name)
    monkeypatch.setenv("DAGSTER_PG_USERNAME", server.username or "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", server.password or "")
    monkeypatch.setenv("DAGSTER_COMPUTE_LOGS_BUCKET", "goshen-dagster-logs")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    try:
        yield name
    finally:
        postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_production_instance_config_names_the_production_parts(dagster_home: Path) -> None:
    ref = InstanceRef.from_dir(str(dagster_home))

    assert ref.run_storage_data.module_name.startswith("dagster_postgres")
    assert ref.event_storage_data.module_name.startswith("dagster_postgres")
    assert ref.schedule_storage_data.module_name.startswith("dagster_postgres")
    assert ref.run_coordinator_data.class_name == "QueuedRunCoordinator"
    assert ref.run_launcher_data.class_name == "DefaultRunLauncher"
    assert ref.compute_logs_data.class_name == "S3ComputeLogManager"
    assert ref.settings["telemetry"] == {"enabled": False}


@pytest.mark.usefixtures("dagster_database")
def test_production_instance_creates_its_schema_on_postgresql(dagster_home: Path) -> None:
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home))) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert isinstance(instance.run_launcher, DefaultRunLauncher)
        assert instance.get_runs() == []
        assert instance.telemetry_enabled is False
