"""A model that is not deployed: developers read that it is unavailable, admins read why."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from goshen.db import session_scope
from goshen.db.models import Model, ModelStatus
from tests.fixtures.accounts import Account

REGISTRY_ERROR = "RegistryUnavailableError: MLflow answered 400 (INVALID_PARAMETER_VALUE)"


@pytest.mark.parametrize(
    ("status", "error", "said"),
    [
        (ModelStatus.disabled, None, "an admin undeployed it"),
        (ModelStatus.failed, REGISTRY_ERROR, "its last deploy failed; ask an admin"),
    ],
)
def test_generate_says_a_model_is_not_deployed_and_only_admins_see_why(
    client: TestClient,
    developer: Account,
    admin: Account,
    catalog_model: Model,
    sessions: sessionmaker[Session],
    status: ModelStatus,
    error: str | None,
    said: str,
) -> None:
    with session_scope(sessions) as session:
        session.execute(
            update(Model)
            .where(Model.id == catalog_model.id)
            .values(status=status, status_error=error)
        )
    body = {"model": catalog_model.name, "input": {"digit": 4}}
    refused = client.post("/v1/generate", json=body, headers=developer.headers)
    assert refused.status_code == 409 and said in refused.json()["detail"]
    assert "MLflow" not in refused.text and "Registry" not in refused.text
    page = client.get(f"/v1/admin/models/{catalog_model.name}", headers=admin.headers)
    assert page.json()["status_error"] == error
