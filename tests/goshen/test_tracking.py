"""The MLflow tracking server command that `goshen up` and `goshen mlflow` run."""

from __future__ import annotations

from pathlib import Path

from goshen.config import Settings
from goshen.tracking import (
    allowed_host_patterns,
    backend_store_uri,
    prepare_local_stores,
    tracking_server_command,
    tracking_server_environment,
)


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(_env_file=None, home=tmp_path, **overrides)


def test_embedded_default_uses_sqlite_and_local_artifacts_under_home(tmp_path: Path) -> None:
    settings = _settings(tmp_path)

    env = tracking_server_environment(settings)
    prepare_local_stores(settings)

    assert env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == str(tmp_path / "mlflow" / "artifacts")
    assert (tmp_path / "mlflow" / "artifacts").is_dir()
    command = tracking_server_command(settings)
    assert command[1:4] == ["-m", "mlflow", "server"]
    assert command[command.index("--port") + 1] == "5000"
    assert "--serve-artifacts" in command


def test_production_store_password_stays_off_the_command_line(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        mlflow_backend_store_uri="postgresql://mlflow:s3cret@db:5432/mlflow",
        mlflow_artifacts_destination="s3://models/mlflow",
    )

    assert not any("s3cret" in part for part in tracking_server_command(settings))
    assert backend_store_uri(settings) == "postgresql+psycopg://mlflow:s3cret@db:5432/mlflow"
    assert tracking_server_environment(settings)["MLFLOW_ARTIFACTS_DESTINATION"] == (
        "s3://models/mlflow"
    )


def test_mlflow_accepts_the_names_goshen_is_configured_with(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, host="10.1.2.3", mlflow_tracking_uri="https://mlflow.example.com"
    )

    patterns = allowed_host_patterns(settings)

    for name in ("10.1.2.3", "mlflow.example.com", "localhost", "127.0.0.1", "[[]::1]"):
        assert name in patterns
        assert f"{name}:*" in patterns
    command = tracking_server_command(settings)
    origins = command[command.index("--cors-allowed-origins") + 1].split(",")
    assert "https://mlflow.example.com" in origins
    assert "http://10.1.2.3:5000" in origins
