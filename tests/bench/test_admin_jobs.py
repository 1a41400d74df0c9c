"""The admin job list benchmark still runs on PostgreSQL, with a few hundred jobs (no timing)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.fixtures.databases import Postgres

SCRIPT = Path(__file__).parents[2] / "bench" / "admin_jobs.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("admin_jobs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_case_answers_a_page(
    bench: ModuleType,
    postgres: Postgres | None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if postgres is None:
        pytest.skip("PostgreSQL does not answer")
    out = tmp_path / "result.json"
    arguments = ["--database-url", postgres.admin_url, "--jobs", "300", "--requests", "2"]
    assert bench.main([*arguments, "--limits", "20", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    names = dict.fromkeys(["busy_user", "quiet_user", "busy_model", "quiet_model"], "x")
    assert [row["case"] for row in rows] == list(bench.cases(names, bench.datetime.now(bench.UTC)))
    by_case = {row["case"]: row for row in rows}
    assert by_case["unfiltered"]["items_20"] == 20
    assert by_case["cursor half way back"]["items_20"] == 20
    assert all(row["p95_20"] >= row["p50_20"] > 0 for row in rows)
    other = json.loads(out.read_text())["other"]
    assert [row["case"] for row in other] == list(bench.OTHER_READS)
    assert all(row["p95"] >= row["p50"] > 0 for row in other)
    printed = capsys.readouterr().out
    assert "| unfiltered |" in printed and "| GET /v1/admin/stats?window=7d" in printed
