"""The `goshen` command: admin creation and schema management, run as a user would."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from goshen.config import Settings
from goshen.db import make_engine, migrate
from serving.app import create_app
from tests.fixtures.accounts import Account


def goshen(
    *args: str, settings: Settings, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # mlflow.set_experiment in an earlier test of this process leaves MLFLOW_EXPERIMENT_ID in
    # os.environ, naming an experiment of another tracking server: not the CLI's to inherit.
    inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_EXPERIMENT_ID"}
    env = {
        **inherited,
        "GOSHEN_HOME": str(settings.home_dir),
        "GOSHEN_DATABASE_URL": settings.resolved_database_url,
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "goshen_launcher.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_admin_key_manages_developer_keys_through_the_api(settings: Settings) -> None:
    created = goshen("admin", "create", "--email", "ops@example.com", settings=settings)
    assert created.returncode == 0, created.stderr
    admin_key = created.stdout.strip().splitlines()[-1]
    assert admin_key.startswith("gsk_") and created.stdout.count(admin_key) == 1
    admin = {"Authorization": f"Bearer {admin_key}"}

    with TestClient(create_app(settings)) as client:
        user = client.post("/v1/admin/users", json={"email": "dev@example.com"}, headers=admin)
        user_id = user.json()["id"]
        key = client.post(f"/v1/admin/users/{user_id}/keys", json={"name": "dev"}, headers=admin)
        assert key.status_code == 201
        developer = {"Authorization": f"Bearer {key.json()['key']}"}
        assert client.get("/v1/keys", headers=developer).status_code == 200

        listed = client.get("/v1/admin/keys", params={"user_id": user_id}, headers=admin).json()
        assert [k["id"] for k in listed["data"]] == [key.json()["id"]]
        revoke = client.delete(f"/v1/admin/keys/{key.json()['id']}", headers=admin)
        assert revoke.status_code == 200
        assert client.get("/v1/keys", headers=developer).status_code == 401


def test_admin_create_refuses_a_taken_email(settings: Settings) -> None:
    assert goshen("admin", "create", "--email", "a@example.com", settings=settings).returncode == 0
    again = goshen("admin", "create", "--email", "A@example.com", settings=settings)
    assert again.returncode == 2
    assert again.stderr.strip() == "goshen: a user with email a@example.com already exists"
    assert "gsk_" not in again.stdout


def test_db_commands(empty_database_url: str, tmp_path: Path) -> None:
    settings = Settings(_env_file=None, home=tmp_path, database_url=empty_database_url)
    assert "base (empty)" in goshen("db", "current", settings=settings).stdout
    upgraded = goshen("db", "upgrade", settings=settings)
    assert upgraded.returncode == 0 and migrate.head_revision() in upgraded.stdout
    downgraded = goshen("db", "downgrade", "base", settings=settings)
    assert downgraded.returncode == 0, downgraded.stderr
    engine = make_engine(empty_database_url)
    assert migrate.current_revision(engine) is None
    engine.dispose()


def test_a_pipeline_folder_becomes_a_callable_model(
    serving_settings: Settings, tiny_sd_pipeline: Path, developer: Account, tmp_path: Path
) -> None:
    env = {"GOSHEN_MLFLOW_TRACKING_URI": serving_settings.resolved_mlflow_tracking_uri}
    name = f"tiny-sd-{secrets.token_hex(3)}"
    added = goshen(
        "models",
        "add-pipeline",
        str(tiny_sd_pipeline),
        "--name",
        name,
        "--price-micros",
        "2000",
        settings=serving_settings,
        env=env,
    )
    assert added.returncode == 0, added.stderr
    assert f"generate with model {name}" in added.stdout
    with TestClient(create_app(serving_settings)) as client:
        page = client.get(f"/v1/models/{name}", headers=developer.headers).json()
        assert (page["runtime"], page["status"], page["live_version"]) == (
            "diffusers",
            "ready",
            "1",
        )
        assert page["input_schema"]["properties"]["prompt"]["maxLength"] == 2000
        bad = client.post(
            "/v1/generate",
            json={"model": name, "input": {"prompt": "x", "width": 100}},
            headers=developer.headers,
        )
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "input.width"

    (tmp_path / "empty").mkdir()
    refused = goshen(
        "models",
        "add-pipeline",
        str(tmp_path / "empty"),
        "--name",
        "nothing",
        settings=serving_settings,
        env=env,
    )
    assert refused.returncode == 2 and "model_index.json" in refused.stderr
