"""The Models page against the real API: the catalog table, Try it (images from a started worker,
a classifier's labels), pricing and undeploying an entry, and a refused action's problem."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import httpx
from streamlit.testing.v1 import AppTest

from tests.dashboard.conftest import Dashboard, rendered, texts
from tests.fixtures.models import RegisteredModel, deploy_classifier


def _choose(app: AppTest, name: str) -> None:
    app.selectbox(key="models.selected").set_value(name).run()
    assert not app.exception, [exception.value for exception in app.exception]


def _submit(app: AppTest, label: str) -> None:
    next(button for button in app.button if button.label == label).click().run()
    assert not app.exception, [exception.value for exception in app.exception]


def _confirm(app: AppTest, key: str) -> None:
    app.button(key=key).click().run()
    app.button(key=f"{key}.yes").click().run()
    assert not app.exception, [exception.value for exception in app.exception]


def _catalog_row(app: AppTest, name: str) -> dict[str, Any]:
    table = app.dataframe[0].value
    rows: list[dict[str, Any]] = table[table["name"] == name].to_dict("records")
    assert len(rows) == 1, table
    return rows[0]


def test_the_catalog_lists_a_model_and_a_refused_rollback_shows_why(
    dashboard: Dashboard, digits_model: Any
) -> None:
    app = dashboard.open("models")

    row = _catalog_row(app, digits_model.name)
    assert (row["kind"], row["status"], row["visibility"]) == ("generator", "ready", "public")
    assert row["live version"] == digits_model.live_version
    assert row["price"] == "0.001 credits / image"
    _choose(app, digits_model.name)
    _confirm(app, f"models.{digits_model.name}.rollback")
    assert "no previous version to roll back to" in texts(app.error)
    assert "(409)" in texts(app.error)


def test_try_it_generates_images_with_a_started_worker(
    dashboard: Dashboard, digits_model: Any, start_worker: Callable[..., Any]
) -> None:
    start_worker()
    app = dashboard.open("models")
    _choose(app, digits_model.name)

    digit = next(number for number in app.number_input if number.label == "Digit")
    digit.set_value(3)
    num_images = next(number for number in app.number_input if number.label == "Num Images")
    num_images.set_value(2)
    _submit(app, "Generate")

    assert not app.error, texts(app.error)
    assert "**succeeded**, cost 0.002 credits" in rendered(app)
    images = app.get("image")
    assert len(images) == 1
    assert images[0].captions == ["image 1", "image 2"]  # type: ignore[attr-defined]
    job = next(iter(dashboard.api.list_jobs(model=digits_model.name)))
    assert job["input"]["digit"] == 3


def test_try_it_predicts_with_a_classifier_and_shows_its_labels(
    dashboard: Dashboard, register_classifier: Callable[..., RegisteredModel]
) -> None:
    name = f"page-classifier-{secrets.token_hex(3)}"
    register_classifier(name)
    headers = {"Authorization": f"Bearer {dashboard.admin.key}"}
    with httpx.Client(base_url=dashboard.settings.api_url, timeout=120) as api:
        deploy_classifier(api, headers, name)
    app = dashboard.open("models")
    assert _catalog_row(app, name)["kind"] == "predictor"
    _choose(app, name)

    features = next(area for area in app.text_area if area.label == "features")
    assert features.value.startswith("[[0.5, 0.5")  # the model's example row
    _submit(app, "Predict")

    assert not app.error, texts(app.error)
    labels = app.dataframe[-1].value
    assert list(labels.columns) == ["row", "label", "probability"]
    assert labels["label"].iloc[0] in {str(digit) for digit in range(10)}

    next(area for area in app.text_area if area.label == "features").set_value("[[0.5, 0.5")
    _submit(app, "Predict")
    assert "features: not valid JSON" in texts(app.error)


def test_pricing_and_undeploying_change_the_entry(dashboard: Dashboard, digits_model: Any) -> None:
    name = digits_model.name
    app = dashboard.open("models")
    _choose(app, name)

    next(box for box in app.selectbox if box.label == "Pricing unit").set_value("request")
    next(n for n in app.number_input if n.label == "Price per unit (credits)").set_value(0.25)
    _submit(app, "Save pricing")
    assert f"{name} now costs 0.25 credits / request." in texts(app.success)
    assert dashboard.api.get_model(name)["pricing"] == {"unit": "request", "price_micros": 250_000}
    assert _catalog_row(app, name)["price"] == "0.25 credits / request"

    _confirm(app, f"models.{name}.undeploy")
    assert f"Undeploying {name}: done" in texts(app.success)
    assert dashboard.api.get_model(name)["status"] == "disabled"
    assert _catalog_row(app, name)["status"] == "disabled"
