"""/predict, the admin catalog and model uploads against a real MLflow registry holding small
random-weights ONNX classifiers: validation, dynamic batching, deploy, undeploy, rollback."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from goshen import registry
from goshen.client import GoshenAPIError, GoshenClient
from goshen.config import Settings
from goshen.db.models import Model, Role, UsageEvent
from serving.app import create_app
from tests.fixtures.accounts import Account, create_account
from tests.fixtures.models import RegisteredModel, deploy_classifier

ROWS = np.random.default_rng(1).random((5, 64), dtype=np.float32)


@pytest.fixture
def api(serving_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(serving_settings)) as client:
        yield client


@pytest.fixture
def admin(make_account: Callable[..., Account]) -> Account:
    return make_account(Role.admin)


@pytest.fixture
def classifier(
    api: TestClient, admin: Account, register_classifier: Callable[..., RegisteredModel]
) -> dict:
    """A deployed public catalog entry for a fresh registered classifier."""
    name = f"clf-{secrets.token_hex(3)}"
    register_classifier(name)
    return deploy_classifier(api, admin.headers, name)


def _predict(api, account, name: str, inputs):  # type: ignore[no-untyped-def]
    return api.post(f"/v1/models/{name}/predict", json={"inputs": inputs}, headers=account.headers)


def _direct(api: TestClient, name: str, rows: np.ndarray) -> np.ndarray:
    """The same version in a plain ONNX Runtime session, for comparison."""
    folder = registry.model_folder(
        registry.download_version(
            name, "1", api.app.state.api.settings.home_dir / "direct" / name, timeout=10
        )
    )
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"features": rows})[0]


def test_predict_answers_outputs_labels_and_probabilities(
    api: TestClient, developer: Account, classifier: dict[str, Any], sessions: sessionmaker[Session]
) -> None:
    response = _predict(api, developer, classifier["name"], {"features": ROWS.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    probabilities = np.asarray(body["outputs"]["probabilities"])
    np.testing.assert_allclose(probabilities, _direct(api, classifier["name"], ROWS), atol=1e-6)
    assert body["probabilities"] == body["outputs"]["probabilities"]
    assert body["labels"] == [str(p.argmax()) for p in probabilities]
    bare = _predict(api, developer, classifier["name"], ROWS[:2].tolist())  # one input: a list
    assert bare.status_code == 200 and bare.json()["labels"] == body["labels"][:2]
    api.app.state.api.usage.flush()
    with sessions() as session:
        usage = session.scalars(select(UsageEvent).where(UsageEvent.kind == "prediction")).all()
    assert [(u.user_id, u.quantity, u.cost_micros) for u in usage] == [
        (developer.user_id, 1.0, 250)
    ] * 2


def test_the_model_page_publishes_each_input(
    api: TestClient, developer: Account, classifier: dict[str, Any]
) -> None:
    page = api.get(f"/v1/models/{classifier['name']}", headers=developer.headers).json()
    (features,) = page["input_schema"]["inputs"]
    assert (features["name"], features["dtype"]) == ("features", "float32")
    assert features["shape"][1] == 64 and features["value_range"] == [0.0, 1.0]
    example = page["examples"][0]
    assert _predict(api, developer, classifier["name"], example["inputs"]).status_code == 200


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"features": ROWS[:, :10].tolist()}, "inputs.features"),  # wrong shape
        ({"features": [["a"] * 64]}, "inputs.features"),  # wrong dtype
        ({}, "inputs.features"),  # missing input
        ({"features": ROWS.tolist(), "pixels": [[1]]}, "inputs.pixels"),  # unknown input
        ({"features": [[0.5] * 64] * 2000}, "inputs.features"),  # more rows than allowed
        ({"features": [[0.5] * 64, [0.5] * 63]}, "inputs.features"),  # ragged
    ],
)
def test_bad_inputs_are_a_422_naming_the_input(
    api: TestClient, developer: Account, classifier: dict[str, Any], inputs: Any, field: str
) -> None:
    response = _predict(api, developer, classifier["name"], inputs)
    assert response.status_code == 422, response.text
    assert field in [error["field"] for error in response.json()["errors"]]


def test_concurrent_requests_are_batched_and_get_their_own_rows(
    api: TestClient, admin: Account, developer: Account, classifier: dict[str, Any]
) -> None:
    name = classifier["name"]
    # A longer wait makes the merge certain on a busy machine; the code path is the same.
    patched = api.patch(f"/v1/admin/models/{name}", json={"max_wait_ms": 50}, headers=admin.headers)
    assert patched.json()["max_wait_ms"] == 50
    requests = [
        np.random.default_rng(n).random((1 + n % 3, 64), dtype=np.float32) for n in range(24)
    ]
    answers: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(len(requests))

    def send(number: int) -> None:
        barrier.wait()
        response = _predict(api, developer, name, {"features": requests[number].tolist()})
        assert response.status_code == 200, response.text
        answers[number] = np.asarray(response.json()["outputs"]["probabilities"])

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher = api.app.state.api.predict_models._loaded[classifier["id"]].batcher
    assert max(batcher.batch_sizes) > 1, batcher.batch_sizes
    metrics = api.get("/metrics").text
    calls = (
        f'goshen_predict_batch_requests_count{{model="{name}"}} {sum(batcher.batch_sizes.values())}'
    )
    assert calls in metrics
    for number, rows in enumerate(requests):
        alone = _predict(api, developer, name, {"features": rows.tolist()}).json()
        np.testing.assert_array_equal(
            answers[number], np.asarray(alone["outputs"]["probabilities"])
        )


def test_undeploy_deploy_and_rollback_through_the_admin_api(
    api: TestClient,
    admin: Account,
    developer: Account,
    classifier: dict[str, Any],
    register_classifier: Callable[..., RegisteredModel],
) -> None:
    name = classifier["name"]
    undeployed = api.post(f"/v1/admin/models/{name}/undeploy", headers=admin.headers).json()
    assert undeployed["status"] == "disabled"
    refused = _predict(api, developer, name, {"features": ROWS.tolist()})
    assert refused.status_code == 409 and "not deployed" in refused.json()["detail"]

    first = api.post(f"/v1/admin/models/{name}/deploy", headers=admin.headers).json()
    assert (first["status"], first["live_version"]) == ("ready", "1")
    before = _predict(api, developer, name, {"features": ROWS.tolist()}).json()

    register_classifier(name, seed=7)  # version 2 takes the alias
    second = api.post(f"/v1/admin/models/{name}/deploy", headers=admin.headers).json()
    assert (second["live_version"], second["previous_version"]) == ("2", "1")
    changed = _predict(api, developer, name, {"features": ROWS.tolist()}).json()
    assert changed["outputs"] != before["outputs"]

    rolled = api.post(f"/v1/admin/models/{name}/rollback", headers=admin.headers).json()
    assert (rolled["status"], rolled["live_version"], rolled["pinned_version"]) == (
        "ready",
        "1",
        "1",
    )
    again = _predict(api, developer, name, {"features": ROWS.tolist()}).json()
    assert again["outputs"] == before["outputs"]
    ready = api.get("/readyz").json()["checks"]["models"]
    assert (
        ready["ok"]
        and {"name": name, "live_version": "1", "loaded_version": "1"}.items()
        <= next(entry for entry in ready["models"] if entry["name"] == name).items()
    )


def test_the_sdk_predicts_and_runs_the_catalog(
    serving_settings: Settings,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
    admin: Account,
    developer: Account,
    classifier: dict[str, Any],
) -> None:
    name = classifier["name"]
    with (
        run_api(serving_settings) as served,
        GoshenClient(served.api_url, admin.key) as as_admin,
        GoshenClient(served.api_url, developer.key) as as_developer,
    ):
        _sdk_calls(as_admin, as_developer, name)


def _sdk_calls(as_admin: GoshenClient, as_developer: GoshenClient, name: str) -> None:
    answer = as_developer.predict(name, {"features": ROWS})  # an array goes as nested lists
    assert len(answer["labels"]) == len(ROWS)
    assert as_admin.admin_undeploy_model(name)["status"] == "disabled"
    with pytest.raises(GoshenAPIError) as refused:
        as_developer.predict(name, ROWS[:1])
    assert refused.value.status_code == 409 and "not deployed" in str(refused.value)
    assert as_admin.admin_deploy_model(name)["status"] == "ready"
    assert as_admin.admin_update_model(name, description="digits")["description"] == "digits"
    assert as_developer.predict(name, ROWS[:1])["labels"] == answer["labels"][:1]


def test_a_rollback_without_a_previous_version_answers_409(
    api: TestClient, admin: Account, classifier: dict[str, Any]
) -> None:
    response = api.post(f"/v1/admin/models/{classifier['name']}/rollback", headers=admin.headers)
    assert response.status_code == 409


def test_image_models_point_to_generate_and_unknown_models_are_404(
    api: TestClient, developer: Account, digits_model: Model
) -> None:
    wrong = _predict(api, developer, digits_model.name, {"features": []})
    assert wrong.status_code == 422 and "/v1/generate" in wrong.json()["detail"]
    assert _predict(api, developer, "no-such-model", {}).status_code == 404


def test_uploads_are_private_until_an_admin_publishes_them(
    api: TestClient,
    admin: Account,
    developer: Account,
    make_account: Callable[..., Account],
    tiny_onnx_file: Path,
    sessions: sessionmaker[Session],
) -> None:
    name = f"up-{secrets.token_hex(3)}"
    with tiny_onnx_file.open("rb") as file:
        uploaded = api.post(
            "/v1/models",
            data={"name": name, "description": "mine"},
            files={"file": ("model.onnx", file, "application/octet-stream")},
            headers=developer.headers,
        )
    assert uploaded.status_code == 201, uploaded.text
    assert (uploaded.json()["visibility"], uploaded.json()["status"]) == ("private", "ready")
    ready = api.get("/readyz").json()["checks"]["models"]  # private: neither awaited nor shown
    assert ready["ok"] and name not in {entry["name"] for entry in ready["models"]}
    stranger = make_account()
    assert _predict(api, stranger, name, {"x": [[1.0, 2.0]]}).status_code == 404
    assert api.get(f"/v1/models/{name}", headers=stranger.headers).status_code == 404
    listed = api.get("/v1/models", headers=stranger.headers).json()["data"]
    assert name not in {model["name"] for model in listed}
    mine = _predict(api, developer, name, {"x": [[1.0, 2.0]]})
    assert mine.status_code == 200, mine.text
    api.patch(f"/v1/admin/models/{name}", json={"visibility": "public"}, headers=admin.headers)
    assert _predict(api, stranger, name, {"x": [[1.0, 2.0]]}).status_code == 200


@pytest.mark.parametrize("defect", ["external-data-outside", "custom-domain"])
def test_a_refused_upload_leaves_nothing_registered(
    api: TestClient,
    developer: Account,
    bad_onnx_files: dict[str, Path],
    sessions: sessionmaker[Session],
    mlflow_server: str,
    defect: str,
) -> None:
    name = f"bad-{secrets.token_hex(3)}"
    with bad_onnx_files[defect].open("rb") as file:
        refused = api.post(
            "/v1/models",
            data={"name": name},
            files={"file": ("model.onnx", file, "application/octet-stream")},
            headers=developer.headers,
        )
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"] == "file"
    with sessions() as session:
        assert (
            session.scalar(select(func.count()).select_from(Model).where(Model.name == name)) == 0
        )
    assert registry.version_for_alias(mlflow_server, f"{developer.user_id}.{name}", "x", 10) is None
    import mlflow

    assert (
        mlflow.MlflowClient(mlflow_server).search_registered_models(
            filter_string=f"name = '{developer.user_id}.{name}'"
        )
        == []
    )


def test_a_live_model_that_cannot_be_loaded_degrades_readiness_without_holding_it_back(
    serving_settings: Settings,
    sessions: sessionmaker[Session],
    make_model: Callable[..., Model],
    make_account: Callable[..., Account],
) -> None:
    """Every replica would fail it alike: one broken model must not take the API out of its
    load balancer. /readyz says `degraded` and names it; its /predict answers 503."""
    from goshen.db import session_scope
    from goshen.db.models import ModelKind, ModelRuntime

    broken = make_model("never-registered-classifier", "4")
    with session_scope(sessions) as session:
        row = session.get(Model, broken.id)
        row.kind, row.runtime = ModelKind.onnx, ModelRuntime.onnx
    developer = make_account()
    with TestClient(create_app(serving_settings)) as client:
        ready = client.get("/readyz")
        refused = client.post(
            f"/v1/models/{broken.name}/predict", json={"inputs": [[1.0]]}, headers=developer.headers
        )
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    models = ready.json()["checks"]["models"]
    assert models["ok"] is True and models["failed"] == [broken.name]
    (served,) = [entry for entry in models["models"] if entry["name"] == broken.name]
    assert served["loaded_version"] is None and served["last_error"]
    assert refused.status_code == 503 and refused.headers["retry-after"] == "10"
    # Why it failed is for admins (above); the caller learns only to come back.
    assert (
        refused.json()["detail"]
        == f"model {broken.name} cannot be served right now; try again shortly"
    )


def test_another_replica_follows_the_catalog(
    api: TestClient, admin: Account, classifier: dict[str, Any], serving_settings: Settings
) -> None:
    """A second API process on the same catalog: its reconciler loads the public entry, drops
    it when undeployed elsewhere, and rebuilds the batcher when its limits change."""
    name, model_id = classifier["name"], classifier["id"]
    with TestClient(create_app(serving_settings)) as replica:
        state = replica.app.state.api
        models = state.predict_models

        def reconcile() -> None:
            models.reconcile(state.read_sessions, state.sessions)

        reconcile()
        assert models.loaded_version(model_id) == "1"
        api.patch(f"/v1/admin/models/{name}", json={"max_batch_size": 3}, headers=admin.headers)
        reconcile()
        assert models._loaded[model_id].batcher.max_rows == 3
        api.post(f"/v1/admin/models/{name}/undeploy", headers=admin.headers)
        reconcile()
        assert models.loaded_version(model_id) is None


def test_a_patch_cannot_blank_required_fields(
    api: TestClient, admin: Account, classifier: dict[str, Any]
) -> None:
    path = f"/v1/admin/models/{classifier['name']}"
    for field in ("description", "pricing", "visibility"):
        response = api.patch(path, json={field: None}, headers=admin.headers)
        assert response.status_code == 422, (field, response.text)
        assert response.json()["errors"][0]["field"].endswith(field)
    back_to_defaults = api.patch(path, json={"max_batch_size": None}, headers=admin.headers)
    assert back_to_defaults.status_code == 200 and back_to_defaults.json()["max_batch_size"] is None


def test_a_request_without_credit_is_a_402_before_the_model_runs_and_credit_is_charged(
    api: TestClient,
    developer: Account,
    classifier: dict[str, Any],
    sessions: sessionmaker[Session],
) -> None:
    """The classifier costs 250 micro-credits a request: what is served is captured once the
    process ends its chunk, and an account that cannot pay gets the 402 problem."""
    from goshen.billing import ledger

    broke = create_account(sessions, credits_micros=0)
    refused = _predict(api, broke, classifier["name"], {"features": ROWS[:1].tolist()})
    assert refused.status_code == 402, refused.text
    assert refused.json()["type"] == "/problems/insufficient-credit"
    assert refused.json()["required"] == 250

    for _ in range(3):
        assert _predict(
            api, developer, classifier["name"], {"features": ROWS[:1].tolist()}
        ).is_success
    state = api.app.state.api
    state.predict_credit.stop()
    state.usage.flush()
    with sessions() as session:
        assert (
            session.scalar(select(func.count()).where(UsageEvent.user_id == broke.user_id)) == 0
        ), "a refused request is not metered"
        balance = ledger.current(session, developer.user_id)
        granted = api.app.state.api.settings.new_user_credits_micros
        assert (balance.balance_micros, balance.held_micros) == (granted - 3 * 250, 0)
