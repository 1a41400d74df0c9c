"""Tables: a CSV or Parquet upload parsed within the limits, described by its stats, stored."""

from __future__ import annotations

import csv
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow
import pyarrow.parquet as pq

from goshen.db.models import DatasetKind
from goshen.errors import InvalidInputError, PayloadTooLargeError
from goshen.storage import ArtifactStore
from goshen.uploads.formats import UploadFormat
from goshen.uploads.limits import UploadLimits
from goshen.uploads.manifest import MANIFEST_VERSION, TABLE, StoredDataset, put_manifest

MAX_TARGET_CLASSES = 100  # a target with more distinct values gets no distribution in the stats


def read_table(path: Path, fmt: UploadFormat, limits: UploadLimits) -> pl.DataFrame:
    """Parse a CSV or Parquet upload with Polars, within the row, column and size limits."""
    reader = _read_parquet if fmt is UploadFormat.parquet else _read_csv
    frame = reader(path, limits)
    if frame.height > limits.max_table_rows:
        raise _too_many_rows(limits)
    if frame.height == 0:
        raise InvalidInputError("the table has no rows", field="file")
    return frame


def table_stats(frame: pl.DataFrame, target: str | None = None) -> dict[str, Any]:
    """Rows, nulls per column, min/max/mean of numeric columns and the target's distribution."""
    stats: dict[str, Any] = {
        "rows": frame.height,
        "columns": frame.width,
        "nulls": {name: frame[name].null_count() for name in frame.columns},
        "numeric": {
            name: {
                "min": _json_number(frame[name].min()),
                "max": _json_number(frame[name].max()),
                "mean": _json_number(frame[name].mean()),
            }
            for name, dtype in frame.schema.items()
            if dtype.is_numeric()
        },
    }
    if target is not None:
        if target not in frame.columns:
            raise InvalidInputError(
                f"target column {target!r} is not in the table; it has {frame.columns[:20]}",
                field="target",
            )
        stats["target"] = _target_stats(frame[target])
    return stats


def store_table(
    path: Path,
    fmt: UploadFormat,
    store: ArtifactStore,
    prefix: str,
    limits: UploadLimits,
    workdir: Path,
    target: str | None,
) -> StoredDataset:
    """Parse a table upload, store it as Parquet under `prefix` and say what was kept."""
    frame = read_table(path, fmt, limits)
    stats = table_stats(frame, target)
    columns = {name: str(dtype) for name, dtype in frame.schema.items()}
    table_path = workdir / TABLE
    frame.write_parquet(table_path)
    with table_path.open("rb") as file:
        stored = store.put(f"{prefix}/{TABLE}", file, content_type="application/vnd.apache.parquet")
    manifest = {
        "version": MANIFEST_VERSION,
        "kind": DatasetKind.tabular.value,
        "format": fmt.value,
        "table": TABLE,
        "columns": columns,
        "target": target,
    }
    size = stored.size + put_manifest(store, prefix, manifest)
    return StoredDataset(DatasetKind.tabular, fmt, size, 1, {"columns": columns}, stats)


def _read_csv(path: Path, limits: UploadLimits) -> pl.DataFrame:
    with path.open(newline="", encoding="utf-8", errors="replace") as text:
        header = next(csv.reader(text), [])
    if len(header) > limits.max_table_columns:
        raise _too_many_columns(limits, len(header))
    try:
        # One row past the limit is enough to refuse; the whole read decides the column types.
        return pl.read_csv(path, n_rows=limits.max_table_rows + 1, infer_schema_length=None)
    except (pl.exceptions.PolarsError, csv.Error) as exc:
        raise InvalidInputError(
            f"the CSV file could not be read: {_short(exc)}", field="file"
        ) from None


def _read_parquet(path: Path, limits: UploadLimits) -> pl.DataFrame:
    try:
        metadata = pq.ParquetFile(path).metadata  # the footer only
    except (pyarrow.ArrowException, OSError) as exc:
        raise _damaged_parquet(exc) from None
    if metadata.num_columns > limits.max_table_columns:
        raise _too_many_columns(limits, metadata.num_columns)
    if metadata.num_rows > limits.max_table_rows:
        raise _too_many_rows(limits, metadata.num_rows)
    unpacked = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    if unpacked > limits.max_uncompressed_bytes:
        raise PayloadTooLargeError(
            f"the Parquet file unpacks to {unpacked} bytes, over the limit "
            f"GOSHEN_MAX_UNCOMPRESSED_BYTES={limits.max_uncompressed_bytes}"
        )
    try:
        return pl.read_parquet(path)
    except pl.exceptions.PolarsError as exc:
        raise _damaged_parquet(exc) from None


def _target_stats(column: pl.Series) -> dict[str, Any]:
    stats: dict[str, Any] = {"column": column.name, "distinct": column.n_unique()}
    if not column.dtype.is_float() and stats["distinct"] <= MAX_TARGET_CLASSES:
        counts = column.drop_nulls().value_counts(sort=True)
        stats["distribution"] = {str(value): count for value, count in counts.iter_rows()}
    return stats


def _json_number(value: object) -> float | int | None:
    """A statistic as JSON can hold it: NaN, infinities and empty columns become None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float | Decimal) and math.isfinite(value):
        return float(value)
    return None


def _too_many_rows(limits: UploadLimits, rows: int | None = None) -> PayloadTooLargeError:
    counted = f"{rows} rows" if rows is not None else f"more than {limits.max_table_rows} rows"
    return PayloadTooLargeError(
        f"the table has {counted}, over the limit GOSHEN_MAX_TABLE_ROWS={limits.max_table_rows}"
    )


def _damaged_parquet(exc: BaseException) -> InvalidInputError:
    return InvalidInputError(f"the Parquet file is damaged: {_short(exc)}", field="file")


def _too_many_columns(limits: UploadLimits, columns: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the table has {columns} columns, over the limit GOSHEN_MAX_TABLE_COLUMNS="
        f"{limits.max_table_columns}"
    )


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
