"""Storage snapshots: what each user keeps on the platform on a day, priced per GB-month.

Three kinds, each measured where the platform records it:

- `datasets`: the uploaded bytes a dataset row records (`datasets.size_bytes`);
- `models`: the catalog models a user owns (uploaded or trained), sized by the caller from the
  registry's artifacts, since no table records their size;
- `outputs`: the images generation jobs stored under `outputs/<user id>/`, summed from the
  artifact store's listing (no table records their size either).

A day's snapshot counts what exists when it is taken and was made before the day ended; the daily
schedule takes it just after midnight, so it is the day's closing state. A GB is 10^9 bytes; a
day costs its month's GB-month price divided by the month's days, rounded to the micro-credit.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime

import pyarrow as pa
from sqlalchemy import select
from sqlalchemy.orm import Session

from goshen.billing.rollups import day_bounds
from goshen.db.models import Dataset, Model
from goshen.storage import ArtifactStore, artifact_key

BYTES_PER_GB = 10**9
KINDS = ("datasets", "models", "outputs")
OUTPUTS_PREFIX = "outputs"
STORAGE_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("kind", pa.string()),
        ("bytes", pa.int64()),
        ("objects", pa.int64()),
        ("price_micros_per_gb_month", pa.int64()),
        ("cost_micros", pa.int64()),
    ]
)

ModelSizer = Callable[[Model], int]


@dataclass(frozen=True)
class StoragePrices:
    """Micro-credits per GB-month of each kind."""

    datasets_micros_per_gb_month: int
    models_micros_per_gb_month: int

    def for_kind(self, kind: str) -> int:
        if kind == "models":
            return self.models_micros_per_gb_month
        return self.datasets_micros_per_gb_month


@dataclass(frozen=True)
class Stored:
    """One user's bytes of one kind."""

    user_id: str
    kind: str
    bytes: int
    objects: int


def storage_daily_key(day: date) -> str:
    """Where a day's storage snapshot is kept in the artifact store."""
    return artifact_key("billing", "storage_daily", f"{day.isoformat()}.parquet")


def day_cost_micros(stored_bytes: int, micros_per_gb_month: int, day: date) -> int:
    """A day's share of a GB-month price for `stored_bytes`, rounded half up."""
    days = calendar.monthrange(day.year, day.month)[1]
    denominator = BYTES_PER_GB * days
    return (2 * stored_bytes * micros_per_gb_month + denominator) // (2 * denominator)


def stored_on(
    session: Session, store: ArtifactStore, day: date, model_bytes: ModelSizer
) -> list[Stored]:
    """Each user's bytes by kind that exist now and were made before `day` ended."""
    _, end = day_bounds(day)
    found: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    datasets = session.execute(
        select(Dataset.user_id, Dataset.size_bytes).where(Dataset.created_at < end)
    )
    _add(found, "datasets", ((user_id, size) for user_id, size in datasets))
    models = session.scalars(
        select(Model).where(Model.owner_id.is_not(None), Model.created_at < end)
    )
    _add(found, "models", ((m.owner_id or "", model_bytes(m)) for m in models))
    _add(found, "outputs", _outputs(store, end))
    return [
        Stored(user_id, kind, total, objects)
        for (user_id, kind), (total, objects) in sorted(found.items())
        if total > 0
    ]


def snapshot_table(day: date, stored: list[Stored], prices: StoragePrices) -> pa.Table:
    """The day's snapshot, priced, sorted by user and kind."""
    rows = sorted(stored, key=lambda s: (s.user_id, s.kind))
    columns: dict[str, list[object]] = {field.name: [] for field in STORAGE_SCHEMA}
    for item in rows:
        price = prices.for_kind(item.kind)
        columns["user_id"].append(item.user_id)
        columns["kind"].append(item.kind)
        columns["bytes"].append(item.bytes)
        columns["objects"].append(item.objects)
        columns["price_micros_per_gb_month"].append(price)
        columns["cost_micros"].append(day_cost_micros(item.bytes, price, day))
    return pa.Table.from_pydict(columns, schema=STORAGE_SCHEMA)


def _add(
    found: dict[tuple[str, str], list[int]],
    kind: str,
    sizes: Iterable[tuple[str, int]],
) -> None:
    for user_id, size in sizes:
        if not user_id:
            continue
        entry = found[(user_id, kind)]
        entry[0] += int(size or 0)
        entry[1] += 1


def _outputs(store: ArtifactStore, end: datetime) -> Iterable[tuple[str, int]]:
    for info in store.list(OUTPUTS_PREFIX):
        parts = info.key.split("/")
        if len(parts) > 2 and info.last_modified < end:
            yield parts[1], info.size
