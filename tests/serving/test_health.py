"""Health, readiness, metrics and the OpenAPI docs."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from goshen.catalog import DIGITS_CLASSIFIER, DIGITS_DIFFUSION
from goshen.config import Settings
from serving.app import create_app
from serving.routes.health import Readiness
from tests.fixtures.accounts import Account
from tests.fixtures.models import RegisteredModel, register_tiny_classifier, register_tiny_digits
from tests.fixtures.servers import _free_port


def test_health_and_readiness_of_a_fresh_platform(
    serving_settings: Settings, empty_registry: str
) -> None:
    """Nothing trained yet: the built-in entries wait for their alias, and that is ready."""
    fresh = Settings(
        **{
            **serving_settings.model_dump(),
            "_env_file": None,
            "mlflow_tracking_uri": empty_registry,
        }
    )
    with TestClient(create_app(fresh)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
    assert ready.status_code == 200
    body = Readiness.model_validate(ready.json())
    assert body.status == "ok"
    for check in (body.checks.database, body.checks.storage, body.checks.registry):
        assert (check.ok, check.error) == (True, None)
    assert (body.checks.models.ok, body.checks.models.error) == (True, None)
    assert body.checks.models.models == []  # no live ONNX model yet
    waiting = {entry.name: entry for entry in body.checks.models.deploying}
    assert waiting[DIGITS_CLASSIFIER].follows == f"{DIGITS_CLASSIFIER}@production"
    assert waiting[DIGITS_CLASSIFIER].reason == (
        f"{DIGITS_CLASSIFIER}@production is not in the MLflow registry yet"
    )


def test_a_fresh_platform_serves_what_the_registry_already_holds(
    settings: Settings,
    registry_with_digits: tuple[str, dict[str, RegisteredModel]],
    developer: Account,
) -> None:
    """A new platform database beside a registry that holds digits-classifier@production and
    digits-diffusion@production: both serve at once, with no admin deploy."""
    uri, registered = registry_with_digits
    fresh = Settings(**{**settings.model_dump(), "_env_file": None, "mlflow_tracking_uri": uri})
    with TestClient(create_app(fresh)) as client:
        ready = client.get("/readyz")
        answer = client.post(
            f"/v1/models/{DIGITS_CLASSIFIER}/predict",
            json={"inputs": {"features": [[0.5] * 64]}},
            headers=developer.headers,
        )
        generator = client.get(f"/v1/models/{DIGITS_DIFFUSION}", headers=developer.headers)
    assert ready.status_code == 200, ready.text
    body = Readiness.model_validate(ready.json())
    version = registered[DIGITS_CLASSIFIER].version
    assert (body.status, body.checks.models.deploying) == ("ok", [])
    assert [model.model_dump() for model in body.checks.models.models] == [
        {
            "name": DIGITS_CLASSIFIER,
            "live_version": version,
            "loaded_version": version,
            "last_error": None,
        }
    ]
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["labels"]) == 1
    assert (generator.json()["status"], generator.json()["live_version"]) == (
        "ready",
        registered[DIGITS_DIFFUSION].version,
    )


@pytest.mark.parametrize("fault", ["refuses", "hangs"])
def test_readiness_names_an_unreachable_registry_within_the_timeout(
    settings: Settings, fault: str
) -> None:
    """The registry is not required: loaded models keep serving, so the answer is 200,
    degraded, naming it, and comes within about GOSHEN_DEPENDENCY_TIMEOUT_SECONDS."""
    with _unreachable_port(hangs=fault == "hangs") as port:
        uri = f"http://127.0.0.1:{port}"
        down = _with(settings, mlflow_tracking_uri=uri, dependency_timeout_seconds=1)
        with TestClient(create_app(down)) as client:
            assert client.app.state.api.predict_models.first_pass.wait(10)
            started = time.monotonic()
            ready = client.get("/readyz")
            took = time.monotonic() - started
    assert ready.status_code == 200
    body = Readiness.model_validate(ready.json())
    assert body.status == "degraded" and body.checks.models.ok
    assert body.checks.registry.ok is False
    error = body.checks.registry.error or ""
    assert error.startswith(("the MLflow registry does not answer (", "the MLflow registry did"))
    assert uri not in ready.text  # where it is goes to the log, not to anonymous callers
    # A 1 s deadline, with room for a loaded machine: the point is seconds, not minutes.
    assert took < 8, f"/readyz took {took:.1f} s with a 1 s dependency timeout"
    waiting = {entry.name: entry.reason for entry in body.checks.models.deploying}
    assert "the MLflow registry does not answer" in waiting[DIGITS_CLASSIFIER]


def test_readiness_names_a_store_that_cannot_be_written(settings: Settings) -> None:
    with _unreachable_port(hangs=False) as port:
        settings = _with(settings, mlflow_tracking_uri=f"http://127.0.0.1:{port}")
        with TestClient(create_app(settings)) as client:
            folder = settings.artifacts_dir
            shutil.rmtree(folder, ignore_errors=True)
            folder.parent.mkdir(parents=True, exist_ok=True)
            folder.write_text("a file where the store's folder should be")
            ready = client.get("/readyz")
    assert ready.status_code == 503
    body = Readiness.model_validate(ready.json())
    assert (body.status, body.checks.database.ok, body.checks.storage.ok) == (
        "unavailable",
        True,
        False,
    )
    assert (body.checks.storage.error or "").startswith("the artifact store does not answer (")
    assert str(folder) not in ready.text


def test_readiness_fails_when_the_database_is_gone(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        # Swap in an engine whose database cannot be reached, as after a network partition.
        unreachable = create_engine(
            "postgresql+psycopg://nobody:hunter2@127.0.0.1:1/none?connect_timeout=1"
        )
        client.app.state.api = replace(client.app.state.api, engine=unreachable)
        ready = client.get("/readyz")
    assert ready.status_code == 503
    body = Readiness.model_validate(ready.json())
    error = body.checks.database.error or ""
    assert body.status == "unavailable" and body.checks.database.ok is False
    assert error == "the database does not answer (OperationalError)"
    # Where it is, credentials and the driver's message stay in the server log.
    assert "127.0.0.1" not in ready.text and "hunter2" not in ready.text


def test_metrics_count_requests_by_route_template(client: TestClient, developer: Account) -> None:
    client.get(f"/v1/keys/{developer.key_id}", headers=developer.headers)
    client.get("/v1/keys/key_missing", headers=developer.headers)
    text = client.get("/metrics").text
    assert (
        'goshen_http_requests_total{method="GET",route="/v1/keys/{key_id}",status="200"} 1.0'
        in text
    )
    assert 'route="/v1/keys/{key_id}",status="404"} 1.0' in text
    assert "goshen_http_request_duration_seconds_bucket" in text
    assert developer.key_id not in text


def test_docs_and_openapi(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/keys" in spec["paths"] and "/v1/admin/users" in spec["paths"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    readiness = spec["paths"]["/readyz"]["get"]["responses"]
    for status in ("200", "503"):
        schema = readiness[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Readiness"}
    assert spec["components"]["schemas"]["Readiness"]["properties"]["status"]["enum"] == [
        "ok",
        "degraded",
        "unavailable",
    ]


def test_unknown_route_is_a_problem(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404


@contextmanager
def _own_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An MLflow registry of this module's own: the built-in names are fixed, and the session's
    shared registry may hold them already, depending on which tests ran before."""
    import mlflow

    from goshen.tracking import running_tracking_server

    home = tmp_path_factory.mktemp("registry")
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    with running_tracking_server(
        Settings(_env_file=None, home=home, mlflow_port=_free_port())
    ) as uri:
        yield uri
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


@pytest.fixture(scope="module")
def empty_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry that holds nothing: a platform before its first training; its URI."""
    with _own_registry(tmp_path_factory) as uri:
        yield uri


@pytest.fixture(scope="module")
def registry_with_digits(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, dict[str, RegisteredModel]]]:
    """A registry already holding tiny digits-classifier and digits-diffusion versions aliased
    `production`; its URI."""
    with _own_registry(tmp_path_factory) as uri:
        yield (
            uri,
            {
                DIGITS_CLASSIFIER: register_tiny_classifier(uri, DIGITS_CLASSIFIER),
                DIGITS_DIFFUSION: register_tiny_digits(uri, DIGITS_DIFFUSION),
            },
        )


@contextmanager
def _unreachable_port(*, hangs: bool) -> Iterator[int]:
    """A loopback port that refuses connections, or (`hangs`) takes them and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if hangs:
            listener.listen(64)  # the kernel completes handshakes; nobody ever reads
        yield listener.getsockname()[1]


def _with(settings: Settings, **changes: object) -> Settings:
    return Settings(**{**settings.model_dump(), "_env_file": None, **changes})
