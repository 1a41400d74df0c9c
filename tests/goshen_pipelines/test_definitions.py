"""The code location loads, and its resources reach the platform the settings point at."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import mlflow
import pytest
from sqlalchemy import text

from goshen.storage import artifact_key
from goshen_pipelines.definitions import defs
from goshen_pipelines.resources import ArtifactStorage, MLflowTracking, PlatformDatabase


@pytest.fixture
def goshen_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GOSHEN_HOME", str(tmp_path))
    monkeypatch.setenv("GOSHEN_MLFLOW_PORT", "5999")
    return tmp_path


@pytest.fixture
def restore_mlflow_uri() -> Iterator[None]:
    previous = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(previous)


def test_definitions_load_with_the_platform_resources() -> None:
    dg.Definitions.validate_loadable(defs)
    resources = defs.get_repository_def().get_top_level_resources()
    assert set(resources) == {"platform_db", "mlflow", "artifact_store", "io_manager"}


@pytest.mark.usefixtures("restore_mlflow_uri")
def test_resources_follow_goshen_settings_when_a_run_starts(goshen_home: Path) -> None:
    @dg.asset
    def probe(
        platform_db: PlatformDatabase, mlflow: MLflowTracking, artifact_store: ArtifactStorage
    ) -> dg.MaterializeResult:
        with platform_db.session() as session:
            answer = session.execute(text("SELECT 1")).scalar_one()
        artifact_store.store.put(artifact_key("probe", "hello.txt"), b"hello")
        return dg.MaterializeResult(
            metadata={"answer": answer, "process_uri": _process_tracking_uri()}
        )

    result = dg.materialize([probe], resources=defs.resources)

    assert result.success
    metadata = result.asset_materializations_for_node("probe")[0].metadata
    assert metadata["answer"].value == 1
    assert metadata["process_uri"].value == "http://127.0.0.1:5999"
    assert (goshen_home / "goshen.db").exists()
    assert (goshen_home / "artifacts" / "probe" / "hello.txt").read_bytes() == b"hello"


def test_explicit_configuration_wins_over_settings(goshen_home: Path) -> None:
    database = PlatformDatabase(database_url=f"sqlite:///{goshen_home / 'other.db'}")
    tracking = MLflowTracking(tracking_uri="http://mlflow.internal:5000")

    assert database.url.endswith("other.db")
    assert tracking.uri == "http://mlflow.internal:5000"
    assert PlatformDatabase().url == f"sqlite:///{goshen_home / 'goshen.db'}"
    assert MLflowTracking().uri == "http://127.0.0.1:5999"


def _process_tracking_uri() -> str:
    # Inside `probe` the name mlflow is the resource, not the module.
    return mlflow.get_tracking_uri()
