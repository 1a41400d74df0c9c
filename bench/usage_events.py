"""Synthetic usage events, shaped like the platform's, written to Parquet a row group at a time.

Thousands of users drawn Zipf-like, each with a few favourite models out of tens (prediction
models priced per request, generation per image or second, training per second), 1 to 3 API keys
each, integer micro-credit costs, lognormal run seconds, and 30 days of timestamps in time order,
as the append-only table exports. `ensure_events` caches the file: the same size and seed give
the same events. The layout is pyarrow's default, which the benchmark measured against others
(BENCHMARKS.md): ids as dictionary-encoded strings, `created_at` an int64 timestamp, snappy
pages (uncompressed saved under 10 % of the rollup for 1.4x the bytes), 1 M-row row groups.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

USERS, KEYS_PER_USER, FAVOURITES, DAYS = 5_000, 3, 8, 30
ROW_GROUP = 1_000_000
START = datetime(2026, 11, 1, tzinfo=UTC)
# Kind, unit, models, share of events, price range in micro-credits per unit, median seconds.
MODEL_KINDS = (
    ("prediction", "request", 24, 0.80, (5, 100), (0.002, 0.02)),
    ("generation", "image", 8, 0.15, (2_000, 20_000), (2.0, 8.0)),
    ("generation", "second", 4, 0.04, (200, 2_000), (5.0, 30.0)),
    ("training", "second", 4, 0.01, (100, 1_000), (300.0, 3_000.0)),
)
CROCKFORD = np.array(list("0123456789ABCDEFGHJKMNPQRSTVWXYZ"))


def zipf_cdf(n: int, exponent: float) -> np.ndarray:
    weights: np.ndarray = 1.0 / np.arange(1, n + 1) ** exponent
    cumulative: np.ndarray = np.cumsum(weights)
    cdf: np.ndarray = cumulative / cumulative[-1]
    return cdf


def draw(rng: np.random.Generator, cdf: np.ndarray, size: int | tuple[int, ...]) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(size)), len(cdf) - 1)


def platform_ids(rng: np.random.Generator, prefix: str, n: int) -> pa.Array:
    """`n` ids shaped like goshen.ids.new_id's (`usr_` and 26 Crockford characters)."""
    chars = rng.choice(CROCKFORD, size=(n, 26))
    return pa.array([prefix + "".join(row) for row in chars])


def catalog(seed: int) -> dict[str, Any]:
    """Users, their keys and favourite models; models with their kind, unit, price and speed."""
    rng = np.random.default_rng([seed, 0])
    kinds, units = ["prediction", "generation", "training"], ["image", "second", "request"]
    model_kind, model_unit, share, price, median = [], [], [], [], []
    for kind, unit, count, kind_share, prices, seconds in MODEL_KINDS:
        model_kind += [kinds.index(kind)] * count
        model_unit += [units.index(unit)] * count
        weights = 1.0 / np.arange(1, count + 1)  # Zipf within a kind: a few models dominate
        share += list(kind_share * weights / weights.sum())
        price += list(rng.integers(*prices, size=count, endpoint=True))
        median += list(np.geomspace(*seconds, num=count))
    models = len(share)
    popularity = np.array(share)
    favourites = np.stack(
        [rng.choice(models, FAVOURITES, replace=False, p=popularity) for _ in range(USERS)]
    )
    return {
        "user_ids": platform_ids(rng, "usr_", USERS),
        "key_ids": platform_ids(rng, "key_", USERS * KEYS_PER_USER),
        "model_ids": platform_ids(rng, "mdl_", models),
        "kinds": pa.array(kinds),
        "units": pa.array(units),
        "keys_per_user": rng.integers(1, KEYS_PER_USER, size=USERS, endpoint=True),
        "favourites": favourites,
        "model_kind": np.array(model_kind),
        "model_unit": np.array(model_unit),
        "price": np.array(price, dtype=np.int64),
        "median_seconds": np.array(median),
    }


def event_chunk(
    rng: np.random.Generator, cat: dict[str, Any], rows: int, first_row: int, window: range
) -> pa.RecordBatch:
    """`rows` events in time order between `window`'s start and stop (microseconds)."""
    user = draw(rng, zipf_cdf(USERS, 1.1), rows)
    model = cat["favourites"][user, draw(rng, zipf_cdf(FAVOURITES, 1.2), rows)]
    key = user * KEYS_PER_USER + (rng.random(rows) * cat["keys_per_user"][user]).astype(np.int64)
    kind, unit = cat["model_kind"][model], cat["model_unit"][model]
    seconds = cat["median_seconds"][model] * rng.lognormal(0.0, 0.6, rows)
    images = rng.integers(1, 4, size=rows, endpoint=True)
    requests = rng.geometric(0.5, rows).astype(np.float64)  # rows per /predict call
    quantity = np.select([unit == 0, unit == 1], [images, seconds], requests)
    has_job = kind != 0
    job_numbers = pc.cast(pa.array(np.arange(first_row, first_row + rows)), pa.string())
    job_ids = pc.binary_join_element_wise("job_", pc.utf8_lpad(job_numbers, 26, "0"), "")
    created = np.sort(rng.integers(window.start, window.stop, size=rows))

    def dictionary(indices: np.ndarray, values: pa.Array) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), values)

    columns = {
        "user_id": dictionary(user, cat["user_ids"]),
        "api_key_id": dictionary(key, cat["key_ids"]),
        "model_id": dictionary(model, cat["model_ids"]),
        "job_id": pc.if_else(pa.array(has_job), job_ids, pa.scalar(None, pa.string())),
        "kind": dictionary(kind, cat["kinds"]),
        "quantity": pa.array(quantity),
        "unit": dictionary(unit, cat["units"]),
        "cost_micros": pa.array(np.rint(quantity * cat["price"][model]).astype(np.int64)),
        "images": pa.array(images.astype(np.int32), mask=unit != 0),
        "seconds": pa.array(seconds),
        "created_at": pa.array(created, pa.timestamp("us", tz="UTC")),
    }
    return pa.RecordBatch.from_pydict(columns)


def ensure_events(events: int, cache_dir: Path, seed: int = 0) -> tuple[Path, float | None]:
    """The Parquet file of `events` events, written unless cached; seconds it took to write."""
    path = cache_dir / f"usage_events_{events}_seed{seed}_v1.parquet"
    if path.exists():
        return path, None
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cat = catalog(seed)
    start_us = int(START.timestamp() * 1e6)
    span_us = DAYS * 86_400 * 1_000_000
    chunks = -(-events // ROW_GROUP)
    partial = path.with_suffix(".partial")
    writer: pq.ParquetWriter | None = None
    try:
        for index in range(chunks):
            first = index * ROW_GROUP
            rows = min(ROW_GROUP, events - first)
            window = range(
                start_us + span_us * index // chunks, start_us + span_us * (index + 1) // chunks
            )
            batch = event_chunk(np.random.default_rng([seed, 1, index]), cat, rows, first, window)
            if writer is None:
                # Without the Arrow schema readers see plain strings, as from any other writer.
                writer = pq.ParquetWriter(partial, batch.schema, store_schema=False)
            writer.write_batch(batch, row_group_size=ROW_GROUP)
    finally:
        if writer is not None:
            writer.close()
    partial.rename(path)  # a run stopped halfway never leaves a file that looks complete
    return path, time.perf_counter() - started
