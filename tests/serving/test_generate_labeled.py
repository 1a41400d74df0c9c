"""POST /v1/generate to a model trained on labeled images: the label is checked against the
entry's classes before anything is queued or held, and the job stores the class name."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from goshen import catalog, registry
from goshen.db import session_scope
from goshen.db.models import (
    CreditLedgerEntry,
    Job,
    Model,
    ModelRuntime,
    ModelStatus,
    PricingUnit,
    Visibility,
)
from goshen.runtimes.inputs import labeled_schema
from tests.fixtures.accounts import Account

CLASSES = ["zero", "one", "two"]


@pytest.fixture
def labeled_model(sessions: sessionmaker[Session]) -> Model:
    """A ready entry for a 3-class generator trained on 16x16 images (no registry behind it)."""
    schema, examples = labeled_schema(CLASSES, 16)
    model = catalog.generation_entry(
        f"shapes-{secrets.token_hex(3)}",
        ModelRuntime.onnx_diffusion,
        "not-in-any-registry",
        alias=registry.PRODUCTION,
        live_version="1",
        pricing_unit=PricingUnit.image,
        price_micros=1000,
        visibility=Visibility.public,
        status=ModelStatus.ready,
        classes=CLASSES,
    )
    model.input_schema, model.examples = schema, examples
    with session_scope(sessions) as session:
        session.add(model)
    return model


def _generate(client: TestClient, account: Account, model: Model, model_input: dict[str, Any]):  # type: ignore[no-untyped-def]
    body = {"model": model.name, "input": model_input}
    return client.post("/v1/generate", json=body, headers=account.headers)


def _jobs_and_holds(sessions: sessionmaker[Session]) -> tuple[int, int]:
    with sessions() as session:
        jobs = session.scalar(select(func.count()).select_from(Job))
        holds = session.scalar(
            select(func.count())
            .select_from(CreditLedgerEntry)
            .where(CreditLedgerEntry.kind == "hold")
        )
    return jobs or 0, holds or 0


@pytest.mark.parametrize(
    ("label", "named"),
    [("five", "'five' is not a class"), (3, "class index 3 is out of range"), ("1", "'1'")],
)
def test_a_label_the_model_lacks_is_a_422_naming_its_classes_and_queues_nothing(
    client: TestClient,
    developer: Account,
    labeled_model: Model,
    sessions: sessionmaker[Session],
    label: str | int,
    named: str,
) -> None:
    response = _generate(client, developer, labeled_model, {"label": label, "num_images": 2})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    (error,) = response.json()["errors"]
    assert error["field"] == "input.label"
    assert named in error["message"] and "'zero', 'one', 'two'" in error["message"]
    assert _jobs_and_holds(sessions) == (0, 0)


@pytest.mark.parametrize("label", [True, 1.5, None, {"name": "one"}])
def test_a_label_of_another_type_is_a_422(
    client: TestClient,
    developer: Account,
    labeled_model: Model,
    sessions: sessionmaker[Session],
    label: Any,
) -> None:
    response = _generate(client, developer, labeled_model, {"label": label})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["input.label"]
    assert _jobs_and_holds(sessions) == (0, 0)


def test_a_digits_input_is_refused_by_a_labeled_model(
    client: TestClient, developer: Account, labeled_model: Model
) -> None:
    response = _generate(client, developer, labeled_model, {"digit": 1})
    assert response.status_code == 422
    fields = {error["field"] for error in response.json()["errors"]}
    assert fields == {"input.label", "input.digit"}


@pytest.mark.parametrize("label", ["two", 2])
def test_a_label_by_name_or_index_queues_a_job_holding_the_class_name(
    client: TestClient,
    developer: Account,
    labeled_model: Model,
    sessions: sessionmaker[Session],
    label: str | int,
) -> None:
    response = _generate(client, developer, labeled_model, {"label": label, "num_images": 2})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["input"]["label"] == "two" and isinstance(job["input"]["seed"], int)
    with sessions() as session:
        stored = session.get_one(Job, job["id"])
        assert stored.input["label"] == "two"
    assert _jobs_and_holds(sessions) == (1, 1)


def test_the_model_page_publishes_the_labeled_schema(
    client: TestClient, developer: Account, labeled_model: Model
) -> None:
    page = client.get(f"/v1/models/{labeled_model.name}", headers=developer.headers).json()
    label = page["input_schema"]["properties"]["label"]
    assert label["anyOf"][0] == {"type": "string", "enum": CLASSES}
    assert label["anyOf"][1]["maximum"] == 2
    assert page["examples"][0]["label"] == "zero"
    example = _generate(client, developer, labeled_model, page["examples"][0])
    assert example.status_code == 201, example.text
