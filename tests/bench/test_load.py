"""The load test runs end to end at a low rate: `goshen api` and `goshen worker` on PostgreSQL,
locust's users on every route they name, and none of them gets an error (no timing)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.fixtures.databases import Postgres

SCRIPT = Path(__file__).parents[2] / "bench" / "load" / "run.py"
ROUTES = {
    "POST /v1/models/{name}/predict",
    "POST /v1/generate",
    "GET /v1/jobs/{id}",
    "GET /v1/jobs/{id}/events",
}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("load_run", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.xdist_group("platform-processes")  # one platform of processes at a time
def test_every_route_answers_without_errors_at_a_low_rate(
    bench: ModuleType,
    postgres: Postgres | None,
    mlflow_server: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if postgres is None:
        pytest.skip("PostgreSQL does not answer")
    out = tmp_path / "load.json"
    arguments = ["--database-url", postgres.admin_url, "--tracking-uri", mlflow_server]
    arguments += ["--rates", "1", "--predict-per-job", "4", "--duration", "8", "--accounts", "3"]
    assert bench.main([*arguments, "--out", str(out)]) == 0
    (run,) = json.loads(out.read_text())
    routes = run["routes"]
    assert set(routes) >= ROUTES, f"no requests on {ROUTES - set(routes)}"
    for route, figures in routes.items():
        assert figures["requests"] > 0
        assert figures["errors"] == 0, f"{route}: {figures['statuses']}"
        assert figures["server_errors"] == 0
        assert figures["p99_ms"] >= figures["p50_ms"] > 0
    assert routes["POST /v1/models/{name}/predict"]["statuses"] == {
        "200": routes["POST /v1/models/{name}/predict"]["requests"]
    }
    assert "| 1 | POST /v1/generate | 1/s |" in capsys.readouterr().out
