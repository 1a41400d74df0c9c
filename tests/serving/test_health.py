"""Health, readiness, metrics and the OpenAPI docs."""

from __future__ import annotations

from dataclasses import replace

from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from goshen.config import Settings
from serving.app import create_app
from tests.fixtures.accounts import Account


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ok",
        "checks": {
            "database": {"ok": True, "error": None},
            "models": {"ok": True, "error": None, "models": []},  # no live ONNX model yet
        },
    }


def test_readiness_fails_when_the_database_is_gone(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        # Swap in an engine whose database cannot be reached, as after a network partition.
        unreachable = create_engine(
            "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1"
        )
        client.app.state.api = replace(client.app.state.api, engine=unreachable)
        ready = client.get("/readyz")
    assert ready.status_code == 503
    check = ready.json()["checks"]["database"]
    assert check["ok"] is False and "OperationalError" in check["error"]
    assert "nobody" not in check["error"]  # connection details stay in the server log


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


def test_unknown_route_is_a_problem(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404
