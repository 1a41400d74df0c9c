"""The usage rollup benchmark still runs, and its engines agree, on a tiny file (no timing)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

SCRIPT = Path(__file__).parents[2] / "bench" / "usage_rollup.py"
EVENTS = 20_000
EXACT_QUANTILES = {"duckdb", "polars", "pandas", "pandas-naive"}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("usage_rollup", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(SCRIPT.parent))  # as running the script puts bench/ first
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(bench: ModuleType) -> ModuleType:
    return sys.modules["usage_rollup_report"]  # the script's sibling, imported as it loaded


@pytest.fixture(scope="module")
def events(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, seconds = bench.ensure_events(EVENTS, tmp_path_factory.mktemp("usage"))
    assert seconds is not None  # written now, not found in a cache
    return path


def test_the_file_has_usage_events_columns_and_is_reused(bench: ModuleType, events: Path) -> None:
    table = pq.read_table(events)
    assert table.num_rows == EVENTS
    assert table.column_names == [
        "user_id", "api_key_id", "model_id", "job_id", "kind", "quantity", "unit",
        "cost_micros", "images", "seconds", "created_at",
    ]  # fmt: skip
    assert set(table.column("unit").to_pylist()) == {"image", "second", "request"}
    assert pc.min(table.column("cost_micros")).as_py() >= 0
    # Zipf-like: the busiest user has far more events than the median one.
    counts = table.column("user_id").value_counts().field("counts").to_numpy()
    assert counts.max() > 20 * sorted(counts)[len(counts) // 2]
    # The layout the figures were measured on: ids dictionary-encoded, snappy pages.
    row_group = pq.ParquetFile(events).metadata.row_group(0)
    columns = {row_group.column(i).path_in_schema: row_group.column(i) for i in range(11)}
    for name in ("user_id", "model_id", "unit"):
        assert "RLE_DICTIONARY" in columns[name].encodings, name
    assert {column.compression for column in columns.values()} == {"SNAPPY"}
    assert bench.ensure_events(EVENTS, events.parent) == (events, None)


def test_every_engine_rolls_up_the_same_sums_and_counts(
    bench: ModuleType, report: ModuleType, events: Path
) -> None:
    results = {
        name: bench.normalise(rollup(events, 2)) for name, (rollup, _) in bench.ENGINES.items()
    }
    source = pq.read_table(events)
    reference = results["duckdb"]
    # The rollup keeps every micro-credit and every event of the file it read.
    assert pc.sum(reference.column("cost_micros")) == pc.sum(source.column("cost_micros"))
    assert pc.sum(reference.column("events")).as_py() == EVENTS
    for name, result in results.items():
        comparison = report.compare(reference, result)
        assert comparison["unmatched_groups"] == 0, name
        assert comparison["groups_with_other_cost_or_count"] == 0, name
        assert comparison["sums_agree"], (name, comparison)
        # Exact quantiles have one definition (linear); the t-digest's may differ.
        assert comparison["quantiles_agree"] == (name in EXACT_QUANTILES), (name, comparison)


def test_a_child_reports_its_time_and_memory_or_why_it_failed(
    bench: ModuleType, events: Path, tmp_path: Path
) -> None:
    result = tmp_path / "polars.parquet"
    ok = bench.run_engine("polars", events, result, 2, 8 * 2**30, timeout_s=120)
    assert ok["status"] == "ok", ok
    assert ok["seconds"] > 0 and ok["peak_rss_mib"] >= ok["rss_after_imports_mib"] > 0
    assert pq.read_table(result).schema == bench.RESULT_SCHEMA
    # Under an address-space cap it cannot live in, the child fails alone and says why.
    starved = bench.run_engine("pandas", events, tmp_path / "p.parquet", 2, 2**28, timeout_s=120)
    assert starved["status"] != "ok" and starved["reason"], starved
