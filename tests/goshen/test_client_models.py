"""The SDK's customer loop against the real API on uvicorn: submit and watch a training job, then
run the model it made as its owner (versions, deploys, rollback, delete) and as an admin.

Training itself is the pipelines' (tests/goshen_pipelines/defs/test_customer_models.py); here a
job's run is what the Dagster run would write to its row, and a trained model is a catalog entry
made in the database for a registered classifier, as a training job's version makes it."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from goshen import catalog, registry
from goshen.client import GoshenAPIError, GoshenClient
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import (
    Model,
    Role,
    User,
)
from serving.routes import training as training_routes
from tests.fixtures.accounts import Account
from tests.fixtures.models import RegisteredModel, add_owned_classifier, add_version_record
from tests.fixtures.training import LINES, PRICE, digits_archive, run_training_job

ROWS = np.random.default_rng(2).random((3, 64), dtype=np.float32)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "digits.zip"
    path.write_bytes(digits_archive({0: "zero", 1: "one"}))
    return path


def test_the_sdk_submits_a_training_job_and_follows_its_log_to_the_end(
    live_api: Settings,
    developer: Account,
    make_account: Callable[..., Account],
    sessions: sessionmaker[Session],
    archive: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(training_routes, "LOG_POLL_SECONDS", 0.02)
    monkeypatch.setattr(training_routes, "KEEPALIVE_SECONDS", 0.05)
    with GoshenClient(live_api.api_url, developer.key) as sdk:
        dataset = sdk.upload_dataset(archive, "digits")
        job = sdk.train(dataset["id"], "diffusion", "duo", config={"epochs": 1}, deploy="none")
        assert (job["status"], job["deploy"], job["config"]["epochs"]) == ("queued", "none", 1)
        assert job["estimated_cost_micros"] > 0 and job["links"]["dataset"].endswith(dataset["id"])
        assert [listed["id"] for listed in sdk.list_training_jobs()] == [job["id"]]

        with pytest.raises(TimeoutError, match=job["id"]):  # it never runs: nothing launches it
            sdk.wait_for_training_job(job["id"], timeout=0.5)

        run_training_job(sessions, job["id"], LINES)
        events = list(sdk.training_logs(job["id"]))
        logged = [event.data["message"] for event in events if event.kind == "log"]
        assert logged == LINES  # whitespace and blank lines as the run wrote them
        assert [(event.kind, event.data) for event in events[-2:]] == [
            ("status", {"status": "succeeded"}),
            ("done", {"status": "succeeded"}),
        ]
        resumed = sdk.training_logs(job["id"], last_event_id=events[1].id)
        assert [event.data.get("message") for event in resumed][:2] == LINES[2:]

        seen: list[str] = []
        ended = sdk.wait_for_training_job(job["id"], timeout=30, on_log=seen.append)
        assert seen == LINES
        assert ended["status"] == "succeeded" and ended["gpu_seconds"] >= 3
        assert ended["cost_micros"] == round(ended["gpu_seconds"] * PRICE)
        assert sdk.get_training_job(job["id"]) == ended

        with pytest.raises(GoshenAPIError) as ended_already:
            sdk.cancel_training_job(job["id"])
        assert ended_already.value.status_code == 409
        queued = sdk.train(dataset["id"], "diffusion", "duo")
        assert sdk.cancel_training_job(queued["id"])["status"] == "canceled"

        with pytest.raises(GoshenAPIError) as public_name:
            sdk.train(dataset["id"], "diffusion", catalog.DIGITS_DIFFUSION)
        assert public_name.value.status_code == 422
        assert public_name.value.problem["errors"][0]["field"] == "model_name"

    with GoshenClient(live_api.api_url, make_account().key) as stranger:
        for call in (stranger.get_training_job, stranger.training_logs):
            with pytest.raises(GoshenAPIError) as hidden:
                list(call(job["id"]))
            assert hidden.value.status_code == 404


def _owned_entry(
    sessions: sessionmaker[Session], owner: Account, name: str, registered: RegisteredModel
) -> str:
    """A trained classifier's catalog entry for `owner`, following its registered model's
    `production` alias and not deployed yet (a `deploy: none` job's model); its name."""
    qualified = catalog.owned_name(owner.user_id, name)
    add_owned_classifier(
        sessions, owner.user_id, qualified, registered.name, {registered.version: 0.6}
    )
    return qualified


def _email(sessions: sessionmaker[Session], account: Account) -> str:
    with sessions() as session:
        return session.get_one(User, account.user_id).email


def test_an_owner_runs_their_model_and_others_get_404(
    serving_settings: Settings,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
    developer: Account,
    make_account: Callable[..., Account],
    sessions: sessionmaker[Session],
    register_classifier: Callable[..., RegisteredModel],
) -> None:
    registered = register_classifier(f"clf-{secrets.token_hex(3)}")
    qualified = _owned_entry(sessions, developer, "sizer", registered)
    stranger = make_account()
    with (
        run_api(serving_settings) as served,
        GoshenClient(served.api_url, developer.key) as sdk,
        GoshenClient(served.api_url, stranger.key) as theirs,
    ):
        assert [model["name"] for model in sdk.list_models(owner="me")] == [qualified]
        assert qualified in [model["name"] for model in sdk.list_models()]
        assert qualified not in [model["name"] for model in theirs.list_models()]
        with pytest.raises(GoshenAPIError) as undeployed:
            sdk.predict("sizer", {"features": ROWS})
        assert undeployed.value.status_code == 409

        first = sdk.deploy_model("sizer")  # follows production, as training left it
        assert (first["status"], first["live_version"], first["owned"]) == ("ready", "1", True)
        assert len(sdk.predict("sizer", {"features": ROWS})["labels"]) == len(ROWS)

        second = register_classifier(registered.name, seed=7)  # version 2 takes the alias
        with session_scope(sessions) as session:
            entry = session.scalar(select(Model).where(Model.name == qualified))
            assert entry is not None
            add_version_record(session, entry.id, second.version, accuracy=0.9)
        assert sdk.deploy_model(qualified, version="2")["live_version"] == "2"
        versions = sdk.model_versions("sizer")
        assert [(row["version"], row["live"]) for row in versions] == [("2", True), ("1", False)]
        assert versions[0]["metrics"] == {"val_accuracy": 0.9}
        assert sdk.get_model("sizer")["trained"]["metrics"] == {"val_accuracy": 0.9}

        assert sdk.rollback_model("sizer")["live_version"] == "1"
        assert sdk.describe_model("sizer", "sizes things")["description"] == "sizes things"
        assert sdk.undeploy_model("sizer")["status"] == "disabled"

        for call in (
            lambda: theirs.get_model(qualified),
            lambda: theirs.model_versions(qualified),
            lambda: theirs.deploy_model(qualified, version="1"),
            lambda: theirs.rollback_model(qualified),
            lambda: theirs.describe_model(qualified, "mine now"),
            lambda: theirs.delete_model(qualified),
            lambda: theirs.predict(qualified, {"features": ROWS}),
        ):
            with pytest.raises(GoshenAPIError) as hidden:
                call()
            assert hidden.value.status_code == 404

        sdk.delete_model("sizer")
        with pytest.raises(GoshenAPIError) as deleted:
            sdk.get_model("sizer")
        assert deleted.value.status_code == 404
        assert sdk.list_models(owner="me") == []
    # Its versions stay in the registry for audit, without the alias training moves.
    uri, timeout = serving_settings.resolved_mlflow_tracking_uri, 10
    assert registry.version_exists(uri, registered.name, "2", timeout)
    assert registry.version_for_alias(uri, registered.name, registry.PRODUCTION, timeout) is None


def test_an_admin_lists_gives_away_and_deletes_a_users_model(
    serving_settings: Settings,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
    developer: Account,
    make_account: Callable[..., Account],
    sessions: sessionmaker[Session],
    register_classifier: Callable[..., RegisteredModel],
) -> None:
    registered = register_classifier(f"clf-{secrets.token_hex(3)}")
    qualified = _owned_entry(sessions, developer, "sizer", registered)
    admin, heir = make_account(Role.admin), make_account()
    with (
        run_api(serving_settings) as served,
        GoshenClient(served.api_url, admin.key) as as_admin,
        GoshenClient(served.api_url, developer.key) as sdk,
        GoshenClient(served.api_url, heir.key) as as_heir,
    ):
        assert [row["version"] for row in as_admin.admin_model_versions(qualified)] == ["1"]
        with pytest.raises(GoshenAPIError) as not_admin:
            sdk.admin_model_versions(qualified)
        assert not_admin.value.status_code == 403

        given = as_admin.admin_transfer_model(qualified, _email(sessions, heir))
        assert (given["name"], given["owner_id"]) == (f"{heir.user_id}.sizer", heir.user_id)
        assert sdk.list_models(owner="me") == []
        assert [model["name"] for model in as_heir.list_models(owner="me")] == [given["name"]]
        assert as_heir.get_model("sizer")["owned"]

        as_admin.admin_delete_model(given["name"])
        with pytest.raises(GoshenAPIError) as deleted:
            as_heir.get_model("sizer")
        assert deleted.value.status_code == 404
        with pytest.raises(GoshenAPIError) as gone:
            as_admin.admin_delete_model(given["name"])
        assert gone.value.status_code == 404
