"""Owners manage the models they trained through the developer API; every other account gets
404; admins manage any owner's model, transfer it and publish it only when asked. Against a real
MLflow registry holding tiny random-weights classifiers (two versions of each owned model)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from sqlalchemy.orm import Session, sessionmaker

from goshen import registry
from goshen.config import Settings
from goshen.db.models import (
    ModelStatus,
    Role,
    User,
)
from serving.app import create_app
from tests.fixtures.accounts import Account
from tests.fixtures.models import RegisteredModel, add_owned_classifier
from tests.fixtures.training import digits_archive

ROWS = {"inputs": {"features": np.random.default_rng(3).random((2, 64)).tolist()}}


@pytest.fixture
def api(serving_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(serving_settings)) as client:
        yield client


@pytest.fixture
def owned(
    developer: Account,
    sessions: sessionmaker[Session],
    register_classifier: Callable[..., RegisteredModel],
) -> str:
    """The short name of the developer's own classifier, serving version 2 of 2 (its entry as
    a training job leaves it: private, owned, following `production`)."""
    short = f"mine-{secrets.token_hex(3)}"
    qualified = f"{developer.user_id}.{short}"
    first = register_classifier(qualified, 0)
    second = register_classifier(qualified, 1)
    add_owned_classifier(
        sessions,
        developer.user_id,
        qualified,
        qualified,
        {first.version: 0.5, second.version: 0.5},
        live_version=second.version,
        previous_version=first.version,
        status=ModelStatus.ready,
    )
    return short


def test_an_owner_calls_and_manages_their_model_by_its_short_name(
    api: TestClient, developer: Account, owned: str
) -> None:
    headers = developer.headers
    listed = api.get("/v1/models?owner=me", headers=headers).json()["data"]
    assert [model["name"] for model in listed] == [f"{developer.user_id}.{owned}"]
    assert listed[0]["owned"] is True
    assert api.post(f"/v1/models/{owned}/predict", json=ROWS, headers=headers).status_code == 200

    described = api.patch(f"/v1/models/{owned}", json={"description": "mine"}, headers=headers)
    assert described.status_code == 200 and described.json()["description"] == "mine"
    priced = api.patch(
        f"/v1/models/{owned}",
        json={"description": "x", "pricing": {"unit": "request", "price_micros": 0}},
        headers=headers,
    )
    assert priced.status_code == 422  # prices are the operator's

    versions = api.get(f"/v1/models/{owned}/versions", headers=headers).json()["data"]
    assert sorted((row["version"], row["live"]) for row in versions) == [("1", False), ("2", True)]

    undeployed = api.post(f"/v1/models/{owned}/undeploy", headers=headers)
    assert undeployed.json()["status"] == "disabled"
    refused = api.post(f"/v1/models/{owned}/predict", json=ROWS, headers=headers)
    assert refused.status_code == 409 and f"/v1/models/{developer.user_id}" in refused.text
    deployed = api.post(f"/v1/models/{owned}/deploy", json={"version": "1"}, headers=headers)
    assert deployed.status_code == 200, deployed.text
    assert deployed.json()["live_version"] == "1" and deployed.json()["status"] == "ready"
    rolled = api.post(f"/v1/models/{owned}/rollback", headers=headers)
    assert rolled.status_code == 200 and rolled.json()["live_version"] == "2"


def test_every_other_account_gets_404_on_an_owned_model(
    api: TestClient, developer: Account, make_account: Callable[..., Account], owned: str
) -> None:
    qualified = f"{developer.user_id}.{owned}"
    for stranger in (make_account(), make_account(Role.admin)):
        headers = stranger.headers
        for method, path in [
            ("GET", f"/v1/models/{qualified}"),
            ("GET", f"/v1/models/{owned}"),
            ("GET", f"/v1/models/{qualified}/versions"),
            ("PATCH", f"/v1/models/{qualified}"),
            ("POST", f"/v1/models/{qualified}/deploy"),
            ("POST", f"/v1/models/{qualified}/undeploy"),
            ("POST", f"/v1/models/{qualified}/rollback"),
            ("POST", f"/v1/models/{qualified}/predict"),
            ("DELETE", f"/v1/models/{qualified}"),
        ]:
            body = {"PATCH": {"description": "theirs"}, "POST": {}}.get(method)
            if path.endswith("/predict"):
                body = ROWS
            answer = api.request(method, path, json=body, headers=headers)
            assert answer.status_code == 404, (stranger, method, path, answer.text)
        assert api.get("/v1/models?owner=me", headers=headers).json()["data"] == []
    generated = api.post(
        "/v1/generate",
        json={"model": qualified, "input": {"digit": 1}},
        headers=make_account().headers,
    )
    assert generated.status_code == 404


def test_deleting_a_model_frees_its_name_and_keeps_its_registry_versions(
    api: TestClient, developer: Account, admin: Account, owned: str, mlflow_server: str
) -> None:
    qualified = f"{developer.user_id}.{owned}"
    assert api.delete(f"/v1/models/{owned}", headers=developer.headers).status_code == 204
    assert api.get(f"/v1/models/{owned}", headers=developer.headers).status_code == 404
    predicted = api.post(f"/v1/models/{owned}/predict", json=ROWS, headers=developer.headers)
    assert predicted.status_code == 404
    registry_client = MlflowClient(mlflow_server, mlflow_server)
    assert {v.version for v in registry_client.search_model_versions(f"name='{qualified}'")} == {
        "1",
        "2",
    }
    assert registry.version_by_alias(registry_client, qualified, registry.PRODUCTION) is None
    entries = api.get("/v1/admin/models?limit=100", headers=admin.headers).json()["data"]
    deleted = [entry for entry in entries if entry["registered_model"] == qualified]
    assert len(deleted) == 1 and deleted[0]["deleted_at"] is not None


def test_admins_manage_transfer_and_publish_an_owned_model(
    api: TestClient,
    developer: Account,
    admin: Account,
    make_account: Callable[..., Account],
    sessions: sessionmaker[Session],
    owned: str,
) -> None:
    qualified = f"{developer.user_id}.{owned}"
    versions = api.get(f"/v1/admin/models/{qualified}/versions", headers=admin.headers)
    assert versions.status_code == 200 and len(versions.json()["data"]) == 2

    heir = make_account()
    with sessions() as session:
        heir_email = session.get_one(User, heir.user_id).email
    moved = api.post(
        f"/v1/admin/models/{qualified}/transfer",
        json={"owner_email": heir_email},
        headers=admin.headers,
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["name"] == f"{heir.user_id}.{owned}"
    assert moved.json()["visibility"] == "private"  # publishing takes an explicit field
    assert api.get(f"/v1/models/{owned}", headers=developer.headers).status_code == 404
    assert api.post(f"/v1/models/{owned}/predict", json=ROWS, headers=heir.headers).is_success

    stranger = make_account()
    new_name = f"{heir.user_id}.{owned}"
    assert api.get(f"/v1/models/{new_name}", headers=stranger.headers).status_code == 404
    published = api.patch(
        f"/v1/admin/models/{new_name}", json={"visibility": "public"}, headers=admin.headers
    )
    assert published.status_code == 200
    assert api.get(f"/v1/models/{new_name}", headers=stranger.headers).status_code == 200
    # A published model is called by its qualified name; its short name stays its owner's.
    assert api.get(f"/v1/models/{owned}", headers=stranger.headers).status_code == 404


def test_a_model_name_may_not_shadow_a_public_model_or_change_kind(
    api: TestClient, developer: Account, owned: str
) -> None:
    table = b"width,size\n1,small\n90,big\n3,small\n80,big\n"
    upload = api.post(
        "/v1/datasets",
        files={"file": ("sizes.csv", table, "text/csv")},
        data={"name": "sizes"},
        headers=developer.headers,
    )
    assert upload.status_code == 201, upload.text
    body = {
        "dataset_id": upload.json()["id"],
        "task": "regression",
        "config": {"target": "width"},
    }
    public = api.post(
        "/v1/training-jobs",
        json={**body, "model_name": "digits-classifier"},
        headers=developer.headers,
    )
    assert public.status_code == 422 and "public model" in public.text
    # `owned` is a classifier: its name cannot take a generator's versions.
    archive = digits_archive({0: "zero", 1: "one"}, per_class=2)
    images = api.post(
        "/v1/datasets",
        files={"file": ("digits.zip", archive, "application/zip")},
        data={"name": "digits"},
        headers=developer.headers,
    )
    assert images.status_code == 201, images.text
    generator = api.post(
        "/v1/training-jobs",
        json={"dataset_id": images.json()["id"], "task": "diffusion", "model_name": owned},
        headers=developer.headers,
    )
    assert generator.status_code == 409 and "pick another model_name" in generator.text
