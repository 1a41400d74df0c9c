"""The usage rollup and the storage pricing, on tables built in memory."""

from __future__ import annotations

from datetime import date

import pyarrow as pa
import pytest

from goshen.billing.rollups import (
    EVENT_SCHEMA,
    parquet_bytes,
    read_parquet,
    rollup_totals,
    rollup_usage,
    top_models,
)
from goshen.billing.storage_usage import (
    BYTES_PER_GB,
    StoragePrices,
    Stored,
    day_cost_micros,
    snapshot_table,
)


def _events(
    rows: list[tuple[str, str | None, str | None, str, str, float, int, float]],
) -> pa.Table:
    names = ["user_id", "model_id", "job_id", "kind", "unit", "quantity", "cost_micros", "seconds"]
    columns = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    columns["id"] = [f"use_{i:03d}" for i in range(len(rows))]
    return pa.Table.from_pydict(columns, schema=EVENT_SCHEMA)


EVENTS = _events(
    [
        ("usr_b", "mdl_1", "job_1", "generation", "image", 4.0, 400, 1.0),
        ("usr_a", "mdl_1", "job_2", "generation", "image", 2.0, 200, 2.0),
        ("usr_a", "mdl_1", "job_3", "generation", "image", 1.0, 100, 3.0),
        ("usr_a", "mdl_2", None, "prediction", "request", 10.0, 50, 0.5),
        ("usr_a", None, "job_4", "generation", "second", 5.5, 11, 5.5),
    ]
)


def test_rollup_groups_per_user_model_unit_and_kind_in_key_order() -> None:
    rollup = rollup_usage(EVENTS).to_pylist()

    keys = [(r["user_id"], r["model_id"], r["unit"]) for r in rollup]
    assert keys == [
        ("usr_a", None, "second"),
        ("usr_a", "mdl_1", "image"),
        ("usr_a", "mdl_2", "request"),
        ("usr_b", "mdl_1", "image"),
    ]
    mdl_1 = rollup[1]
    assert (mdl_1["quantity"], mdl_1["cost_micros"]) == (3.0, 300)
    assert (mdl_1["event_count"], mdl_1["job_count"]) == (2, 2)
    assert mdl_1["p50_run_seconds"] == pytest.approx(2.5)
    assert mdl_1["p95_run_seconds"] == pytest.approx(2.95)
    assert rollup[2]["job_count"] == 0  # predictions have no job


def test_rollup_totals_and_top_models() -> None:
    rollup = rollup_usage(EVENTS)

    assert rollup_totals(rollup).cost_micros == 761
    assert rollup_totals(rollup).event_count == 5
    assert top_models(rollup)[0] == {"model_id": "mdl_1", "cost_micros": 700, "events": 3}


def test_the_same_events_in_any_order_give_the_same_bytes() -> None:
    shuffled = EVENTS.take([4, 2, 0, 3, 1])

    first = parquet_bytes(rollup_usage(EVENTS))

    assert parquet_bytes(rollup_usage(shuffled)) == first
    assert read_parquet(first).num_rows == 4


def test_an_empty_day_rolls_up_to_an_empty_table() -> None:
    rollup = rollup_usage(EVENTS.slice(0, 0))

    assert rollup.num_rows == 0
    assert rollup_totals(rollup).cost_micros == 0


def test_a_day_costs_its_share_of_the_month() -> None:
    # 31 GB at 0.10 credits per GB-month for a day of a 31-day month: 0.1 / 31 * 31 credits.
    assert day_cost_micros(31 * BYTES_PER_GB, 100_000, date(2025, 3, 10)) == 100_000
    assert day_cost_micros(28 * BYTES_PER_GB, 150_000, date(2025, 2, 10)) == 150_000
    assert day_cost_micros(0, 100_000, date(2025, 3, 10)) == 0
    # Rounded half up to the micro-credit.
    assert day_cost_micros(BYTES_PER_GB, 100_000, date(2025, 3, 10)) == 3226


def test_models_are_priced_at_the_models_rate() -> None:
    prices = StoragePrices(datasets_micros_per_gb_month=100_000, models_micros_per_gb_month=150_000)
    stored = [
        Stored("usr_a", "models", 30 * BYTES_PER_GB, 1),
        Stored("usr_a", "datasets", 30 * BYTES_PER_GB, 2),
    ]

    table = snapshot_table(date(2025, 4, 1), stored, prices).to_pylist()

    assert [(r["kind"], r["cost_micros"]) for r in table] == [
        ("datasets", 100_000),
        ("models", 150_000),
    ]
