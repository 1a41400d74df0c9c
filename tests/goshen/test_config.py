"""Settings: embedded defaults, .env files, and one-line errors for bad values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from goshen.config import Settings, SettingsError, load_settings


def test_defaults_are_the_embedded_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(_env_file=None)
    home = tmp_path / ".goshen"
    assert settings.home_dir == home
    assert settings.resolved_database_url == f"sqlite:///{home / 'goshen.db'}"
    assert settings.artifacts_dir == home / "artifacts"
    assert settings.resolved_dagster_home == home / "dagster"
    assert (
        settings.resolved_mlflow_backend_store_uri == f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    )
    assert settings.api_url == "http://127.0.0.1:8000"
    assert settings.resolved_mlflow_tracking_uri == "http://127.0.0.1:5000"


def test_environment_and_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("GOSHEN_API_PORT=9100\nGOSHEN_HOST=0.0.0.0\n")
    monkeypatch.setenv("GOSHEN_MLFLOW_PORT", "5055")
    settings = load_settings()
    assert (settings.api_port, settings.mlflow_port) == (9100, 5055)
    # Binding every interface still gives clients a loopback URL.
    assert settings.api_url == "http://127.0.0.1:9100"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("GOSHEN_DATABASE_URL", "not a url", "is not a database URL"),
        ("GOSHEN_DATABASE_URL", "mysql://root@localhost/goshen", "'postgresql' or 'sqlite'"),
        ("GOSHEN_API_PORT", "70000", "less than or equal to 65535"),
        ("GOSHEN_STORAGE_BACKEND", "ftp", "'local' or 's3'"),
        ("GOSHEN_PUBLIC_URL", "example.com", "must start with http"),
        ("GOSHEN_LOG_LEVEL", "chatty", "must be one of"),
    ],
)
def test_invalid_setting_names_the_variable(
    variable: str, value: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings(_env_file=None)
    assert str(raised.value).startswith(f"invalid setting {variable}: ")
    assert expected in str(raised.value)


def test_settings_that_only_make_sense_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOSHEN_STORAGE_BACKEND", "s3")
    with pytest.raises(SettingsError, match="GOSHEN_S3_BUCKET is required"):
        load_settings(_env_file=None)
    monkeypatch.setenv("GOSHEN_STORAGE_BACKEND", "local")
    monkeypatch.setenv("GOSHEN_DAGSTER_PORT", "8000")
    with pytest.raises(SettingsError, match="service ports must differ"):
        load_settings(_env_file=None)


def test_production_refuses_unsafe_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOSHEN_ENV", "production")
    with pytest.raises(SettingsError, match="GOSHEN_SECRET_KEY is required"):
        load_settings(_env_file=None)
    monkeypatch.setenv("GOSHEN_SECRET_KEY", "x" * 40)
    with pytest.raises(SettingsError, match="must point at PostgreSQL"):
        load_settings(_env_file=None)
    monkeypatch.setenv("GOSHEN_DATABASE_URL", "postgresql://goshen@db/goshen")
    assert load_settings(_env_file=None).signing_key == b"x" * 40


def test_development_secret_is_made_once_and_shared(tmp_path: Path) -> None:
    first = Settings(_env_file=None, home=tmp_path).signing_key
    second = Settings(_env_file=None, home=tmp_path).signing_key
    assert first == second and len(first) >= 32
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "command", [["db", "current"], ["up"], ["admin", "create", "--email", "a@b.co"]]
)
def test_cli_reports_a_bad_setting_in_one_line(command: list[str], tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GOSHEN_DATABASE_URL": "postgres:/nonsense::",
        "GOSHEN_HOME": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "goshen_launcher.cli", *command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("goshen: invalid setting GOSHEN_DATABASE_URL: ")
    assert "Traceback" not in result.stderr
