"""The `goshen` command: admin creation and schema management, run as a user would."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from goshen import catalog, pipeline_entries
from goshen.config import Settings
from goshen.db import make_engine, migrate, session_scope
from goshen.db.models import (
    Model,
    ModelKind,
    ModelRuntime,
    ModelVersion,
    PricingUnit,
    User,
    Visibility,
)
from goshen.errors import ConflictError
from goshen_launcher.add_pipeline import PipelineRequest, add_pipeline
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
    one_back = goshen("db", "downgrade", "-1", settings=settings)  # a revision, not an option
    assert one_back.returncode == 0, one_back.stderr
    assert migrate.head_revision() not in one_back.stdout
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


def add_pipeline_cli(
    folder: Path, name: str, *flags: str, settings: Settings
) -> subprocess.CompletedProcess[str]:
    env = {"GOSHEN_MLFLOW_TRACKING_URI": settings.resolved_mlflow_tracking_uri}
    return goshen(
        "models", "add-pipeline", str(folder), "--name", name, *flags, settings=settings, env=env
    )


def registered_versions(mlflow_server: str, registered_model: str) -> list[str]:
    found = MlflowClient(mlflow_server).search_model_versions(f"name='{registered_model}'")
    return sorted((str(version.version) for version in found), key=int)


def recorded_versions(sessions: sessionmaker[Session], model_name: str) -> list[str]:
    with sessions() as session:
        rows = session.scalars(
            select(ModelVersion).join(Model).where(Model.name == model_name)
        ).all()
        assert {(row.source, row.checks_passed) for row in rows} <= {("pipeline", None)}
        return sorted((row.version for row in rows), key=int)


def entry(sessions: sessionmaker[Session], name: str) -> Model:
    with sessions() as session:
        model = session.scalar(select(Model).where(Model.name == name))
        assert model is not None
        return model


def test_adding_a_pipeline_again_rolls_its_new_version_out(
    serving_settings: Settings,
    sessions: sessionmaker[Session],
    tiny_sd_pipeline: Path,
    mlflow_server: str,
) -> None:
    name = f"tiny-sd-{secrets.token_hex(3)}"
    first = add_pipeline_cli(tiny_sd_pipeline, name, settings=serving_settings)
    assert first.returncode == 0, first.stderr
    second = add_pipeline_cli(
        tiny_sd_pipeline, name, "--price-micros", "3000", settings=serving_settings
    )
    assert second.returncode == 0, second.stderr
    assert f"registered version 2 of {name}; model {name} serves it, replacing version 1" in (
        second.stdout
    )
    model = entry(sessions, name)
    assert (model.pinned_version, model.live_version, model.previous_version) == ("2", "2", "1")
    assert (model.price_micros, model.visibility, model.owner_id) == (3000, "public", None)

    held = add_pipeline_cli(tiny_sd_pipeline, name, "--no-deploy", settings=serving_settings)
    assert held.returncode == 0, held.stderr
    assert f"registered version 3 of {name}, registered only" in held.stdout
    assert "still serves version 2" in held.stdout
    model = entry(sessions, name)
    assert (model.pinned_version, model.live_version, model.previous_version) == ("2", "2", "1")
    assert (model.status, model.price_micros) == ("ready", 3000)
    assert registered_versions(mlflow_server, name) == ["1", "2", "3"]
    assert recorded_versions(sessions, name) == ["1", "2", "3"]


def test_an_owner_gets_a_private_entry_named_for_them(
    serving_settings: Settings,
    sessions: sessionmaker[Session],
    tiny_sd_pipeline: Path,
    mlflow_server: str,
    developer: Account,
) -> None:
    with sessions() as session:
        email = session.get_one(User, developer.user_id).email
    name = f"tiny-sd-{secrets.token_hex(3)}"
    owned = f"{developer.user_id}.{name}"
    added = add_pipeline_cli(
        tiny_sd_pipeline, name, "--owner", email, "--private", settings=serving_settings
    )
    assert added.returncode == 0, added.stderr
    assert f"model {owned} (private to {email}) serves it" in added.stdout
    model = entry(sessions, owned)
    assert (model.owner_id, model.visibility, model.registered_model) == (
        developer.user_id,
        Visibility.private,
        owned,
    )
    assert (model.pinned_version, model.live_version) == ("1", "1")
    assert registered_versions(mlflow_server, owned) == recorded_versions(sessions, owned) == ["1"]

    unknown = add_pipeline_cli(
        tiny_sd_pipeline, name, "--owner", "nobody@example.com", settings=serving_settings
    )
    assert unknown.returncode == 2
    assert "no user with email nobody@example.com" in unknown.stderr


def test_refused_pipelines_register_nothing(
    serving_settings: Settings,
    sessions: sessionmaker[Session],
    tiny_sd_pipeline: Path,
    mlflow_server: str,
    developer: Account,
) -> None:
    name = f"tiny-sd-{secrets.token_hex(3)}"
    private = add_pipeline_cli(tiny_sd_pipeline, name, "--private", settings=serving_settings)
    assert private.returncode == 2 and "--private needs --owner EMAIL" in private.stderr
    held = add_pipeline_cli(tiny_sd_pipeline, name, "--no-deploy", settings=serving_settings)
    assert held.returncode == 2 and f"no model {name!r} to keep serving" in held.stderr
    assert registered_versions(mlflow_server, name) == []

    classifier = f"classifier-{secrets.token_hex(3)}"
    theirs = f"tiny-sd-{secrets.token_hex(3)}"
    with session_scope(sessions) as session:
        session.add(
            Model(
                name=classifier,
                kind=ModelKind.onnx,
                runtime=ModelRuntime.onnx,
                registered_model=classifier,
                pricing_unit=PricingUnit.request,
            )
        )
        catalog.add_pipeline_entry(
            session,
            name=theirs,
            registered_model=theirs,
            version="1",
            description="",
            pricing_unit=PricingUnit.image,
            price_micros=0,
            visibility=Visibility.private,
            owner_id=developer.user_id,
        )
    not_pipeline = add_pipeline_cli(tiny_sd_pipeline, classifier, settings=serving_settings)
    assert not_pipeline.returncode == 2
    assert "is not a diffusers pipeline (its runtime is onnx)" in not_pipeline.stderr
    another_owner = add_pipeline_cli(tiny_sd_pipeline, theirs, settings=serving_settings)
    assert another_owner.returncode == 2 and "belongs to another owner" in another_owner.stderr
    assert registered_versions(mlflow_server, classifier) == []
    assert registered_versions(mlflow_server, theirs) == []
    assert entry(sessions, theirs).live_version == "1"


def test_a_version_the_catalog_cannot_record_is_deleted(
    serving_settings: Settings,
    sessions: sessionmaker[Session],
    tiny_sd_pipeline: Path,
    mlflow_server: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def lost_the_name(*_args: object, **_kwargs: object) -> Model:
        raise ConflictError("the catalog already has a model named that")

    monkeypatch.setattr(pipeline_entries, "add_entry", lost_the_name)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # see goshen() above
    name = f"tiny-sd-{secrets.token_hex(3)}"
    with pytest.raises(ConflictError):
        add_pipeline(serving_settings, PipelineRequest(tiny_sd_pipeline, name))
    assert f"the just-registered version 1 of {name} was deleted" in capsys.readouterr().err
    assert registered_versions(mlflow_server, name) == []
    with sessions() as session:
        assert session.scalar(select(Model).where(Model.name == name)) is None
