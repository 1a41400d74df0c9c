"""Deploys that fail: the live version keeps serving, the admin view says why, the answer is a
4xx naming what failed; registering an entry for what the registry lacks is refused the same way.
Against a real MLflow registry holding tiny random-weights classifiers."""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from goshen import registry
from goshen.config import Settings
from goshen.db.models import Model, Role
from serving.app import create_app
from tests.fixtures.accounts import Account
from tests.fixtures.models import RegisteredModel

ROWS = np.random.default_rng(2).random((3, 64), dtype=np.float32).tolist()
PROBLEM = "application/problem+json"


@pytest.fixture
def api(serving_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(serving_settings)) as client:
        yield client


@pytest.fixture
def admin(make_account: Callable[..., Account]) -> Account:
    return make_account(Role.admin)


def _register(api: TestClient, admin: Account, name: str, **where: str) -> Any:
    body = {
        "name": name,
        "registered_model": name,
        "pricing": {"unit": "request", "price_micros": 1},
        "visibility": "public",
        **where,
    }
    return api.post("/v1/admin/models", json=body, headers=admin.headers)


@pytest.fixture
def classifier(
    api: TestClient, admin: Account, register_classifier: Callable[..., RegisteredModel]
) -> str:
    """The name of a public entry serving version 1 of a fresh registered classifier."""
    name = f"clf-{secrets.token_hex(3)}"
    register_classifier(name)
    assert _register(api, admin, name, alias=registry.PRODUCTION).status_code == 201
    deployed = api.post(f"/v1/admin/models/{name}/deploy", headers=admin.headers)
    assert deployed.status_code == 200 and deployed.json()["status"] == "ready", deployed.text
    return name


def _predict(api: TestClient, account: Account, name: str) -> Any:
    return api.post(
        f"/v1/models/{name}/predict", json={"inputs": {"features": ROWS}}, headers=account.headers
    )


def _deploy(api: TestClient, admin: Account, name: str, body: dict[str, str] | None) -> Any:
    return api.post(f"/v1/admin/models/{name}/deploy", json=body, headers=admin.headers)


@pytest.mark.parametrize(
    ("body", "field", "named"),
    [
        ({"version": "999"}, "version", "version 999 of"),
        ({"alias": "nope"}, "alias", "the alias 'nope' of"),
    ],
)
def test_a_deploy_of_what_the_registry_lacks_leaves_the_live_version_serving(
    api: TestClient,
    admin: Account,
    developer: Account,
    classifier: str,
    body: dict[str, str],
    field: str,
    named: str,
) -> None:
    before = _predict(api, developer, classifier)
    assert before.status_code == 200, before.text

    refused = _deploy(api, admin, classifier, body)
    assert (refused.status_code, refused.headers["content-type"]) == (422, PROBLEM)
    assert named in refused.json()["detail"] and "does not exist" in refused.json()["detail"]
    assert refused.json()["errors"][0]["field"] == field

    after = _predict(api, developer, classifier)
    assert after.status_code == 200 and after.json() == before.json()
    entry = api.get(f"/v1/admin/models/{classifier}", headers=admin.headers).json()
    assert (entry["status"], entry["live_version"], entry["alias"], entry["pinned_version"]) == (
        "ready",
        "1",
        registry.PRODUCTION,
        None,
    )
    assert refused.json()["detail"] in entry["status_error"]
    ready = api.get("/readyz").json()["checks"]["models"]
    assert ready["ok"], ready


def test_a_version_that_does_not_load_answers_409_and_a_good_deploy_still_switches(
    api: TestClient,
    admin: Account,
    developer: Account,
    classifier: str,
    register_classifier: Callable[..., RegisteredModel],
    mlflow_server: str,
) -> None:
    before = _predict(api, developer, classifier).json()
    broken = _register_junk_version(mlflow_server, classifier)

    refused = _deploy(api, admin, classifier, {"version": broken})
    assert (refused.status_code, refused.headers["content-type"]) == (409, PROBLEM)
    assert f"version {broken} of {classifier} did not load" in refused.json()["detail"]
    assert _predict(api, developer, classifier).json() == before
    failed = api.get(f"/v1/admin/models/{classifier}", headers=admin.headers).json()
    assert (failed["status"], failed["live_version"]) == ("ready", "1")
    assert "did not load" in failed["status_error"]

    good = register_classifier(classifier, seed=7)  # takes the alias
    deployed = _deploy(api, admin, classifier, None)
    assert deployed.status_code == 200, deployed.text
    entry = deployed.json()
    assert (entry["status"], entry["live_version"], entry["previous_version"]) == (
        "ready",
        good.version,
        "1",
    )
    assert entry["status_error"] is None
    assert _predict(api, developer, classifier).json() != before


def _register_junk_version(tracking_uri: str, name: str) -> str:
    """A new version of `name` whose files are no model at all; the alias stays where it is."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("serving-tests")
    with tempfile.TemporaryDirectory() as workdir, mlflow.start_run() as run:
        (Path(workdir) / "README.txt").write_text("not a model")
        mlflow.log_artifacts(workdir, artifact_path="junk")
    version = mlflow.MlflowClient(tracking_uri).create_model_version(
        name, f"runs:/{run.info.run_id}/junk", run_id=run.info.run_id, await_creation_for=60
    )
    return str(version.version)


def test_a_first_deploy_that_fails_marks_the_entry_failed(
    api: TestClient,
    admin: Account,
    developer: Account,
    register_classifier: Callable[..., RegisteredModel],
) -> None:
    name = f"clf-{secrets.token_hex(3)}"
    register_classifier(name)
    assert _register(api, admin, name, alias=registry.PRODUCTION).status_code == 201

    refused = _deploy(api, admin, name, {"version": "999"})
    assert refused.status_code == 422 and "version 999 of" in refused.json()["detail"]
    entry = api.get(f"/v1/admin/models/{name}", headers=admin.headers).json()
    assert entry["status"] == "failed" and "version 999 of" in entry["status_error"]
    not_served = _predict(api, developer, name)
    assert not_served.status_code == 409 and "last deploy failed" in not_served.json()["detail"]
    assert "999" not in not_served.json()["detail"]  # the why is for admins


def test_a_failed_alias_deploy_of_an_image_model_keeps_its_live_version(
    api: TestClient, admin: Account, digits_model: Model
) -> None:
    refused = _deploy(api, admin, digits_model.name, {"alias": "nope"})
    assert refused.status_code == 422 and "the alias 'nope' of" in refused.json()["detail"]
    entry = api.get(f"/v1/admin/models/{digits_model.name}", headers=admin.headers).json()
    assert (entry["status"], entry["live_version"], entry["alias"]) == (
        "ready",
        digits_model.live_version,
        registry.PRODUCTION,
    )
    assert refused.json()["detail"] in entry["status_error"]


def test_registering_what_the_registry_lacks_names_it(
    api: TestClient, admin: Account, register_classifier: Callable[..., RegisteredModel]
) -> None:
    name = f"clf-{secrets.token_hex(3)}"
    register_classifier(name)
    for where, field, named in [
        ({"alias": "nope"}, "alias", "the alias 'nope' of"),
        ({"version": "999"}, "version", "version 999 of"),
    ]:
        refused = _register(api, admin, name, **where)
        assert (refused.status_code, refused.headers["content-type"]) == (422, PROBLEM), where
        assert named in refused.json()["detail"]
        assert refused.json()["errors"][0]["field"] == field
    unknown = _register(api, admin, f"missing-{secrets.token_hex(3)}", alias="production")
    assert unknown.status_code == 404 and "no registered model" in unknown.json()["detail"]
    assert api.get(f"/v1/admin/models/{name}", headers=admin.headers).status_code == 404
