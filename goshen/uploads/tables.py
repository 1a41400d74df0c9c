"""Tables: a CSV or Parquet upload parsed within the limits, described by its stats, stored."""

from __future__ import annotations

import codecs
import csv
import io
import logging
import math
import re
import zoneinfo
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
# Polars reads the table and has no field limit; the csv module reads only the header, to count
# columns before Polars reads anything. A header within csv's own field limit (128 KiB by default)
# can never trip that limit, so it is the header's limit too.
MAX_CSV_HEADER_BYTES = 128 * 1024
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")

log = logging.getLogger(__name__)


def read_table(path: Path, fmt: UploadFormat, limits: UploadLimits) -> pl.DataFrame:
    """Parse a CSV or Parquet upload with Polars, within the row, column and size limits."""
    reader = _read_parquet if fmt is UploadFormat.parquet else _read_csv
    frame = reader(path, limits)
    _check_column_names(frame.columns)
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
    columns = len(_csv_header(path))
    if columns > limits.max_table_columns:
        raise _too_many_columns(limits, columns)
    try:
        # One row past the limit is enough to refuse; the whole read decides the column types.
        return pl.read_csv(path, n_rows=limits.max_table_rows + 1, infer_schema_length=None)
    except pl.exceptions.PolarsError as exc:
        raise InvalidInputError(
            f"the CSV file could not be read: {_short(exc)}", field="file"
        ) from None
    except pl.exceptions.PanicException as exc:
        raise _reader_failed("CSV", exc) from None


def _csv_header(path: Path) -> list[str]:
    """The CSV's first record, parsed from at most MAX_CSV_HEADER_BYTES bytes."""
    with path.open("rb") as file:
        head = file.read(MAX_CSV_HEADER_BYTES + 1).removeprefix(codecs.BOM_UTF8)
    # Bytes that are not UTF-8 after the header are the rows' problem, which Polars names.
    text, not_utf8_at = _utf8_prefix(head[:MAX_CSV_HEADER_BYTES])
    more = len(head) > MAX_CSV_HEADER_BYTES or not_utf8_at is not None
    try:
        header, ended = _first_record(text, more)
    except csv.Error as exc:
        raise InvalidInputError(
            f"the CSV header could not be read: {_short(exc)}", field="file"
        ) from None
    if not ended and not_utf8_at is not None:
        raise InvalidInputError(
            f"the CSV header is not UTF-8 text (byte {not_utf8_at}); save the file as UTF-8",
            field="file",
        )
    if not ended:
        raise InvalidInputError(
            f"the CSV header (its first line) is longer than {MAX_CSV_HEADER_BYTES} bytes, the "
            f"limit MAX_CSV_HEADER_BYTES={MAX_CSV_HEADER_BYTES}; shorten the column names, or "
            "check that the file is a CSV table",
            field="file",
        )
    return header


def _utf8_prefix(data: bytes) -> tuple[str, int | None]:
    """`data` as text up to its first byte that is not UTF-8, and that byte's offset, if any."""
    try:
        # The bytes may end inside a character; only a real error counts.
        return codecs.getincrementaldecoder("utf-8")().decode(data, final=False), None
    except UnicodeDecodeError as exc:
        return data[: exc.start].decode(), exc.start


def _first_record(text: str, more: bool) -> tuple[list[str], bool]:
    """The first CSV record of `text`, and whether it ends there; `more`: the file goes on."""
    records = csv.reader(io.StringIO(text, newline=""))
    header = next(records, [])
    ended = not more or text.endswith(("\n", "\r")) or next(records, None) is not None
    return header, ended


def _read_parquet(path: Path, limits: UploadLimits) -> pl.DataFrame:
    try:
        parquet = pq.ParquetFile(path)  # reads the footer only
        metadata, schema = parquet.metadata, parquet.schema_arrow
    except (pyarrow.ArrowException, OSError) as exc:
        raise _unreadable_parquet(exc) from None
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
    _check_time_zones(schema)
    try:
        return pl.read_parquet(path)
    except pl.exceptions.PolarsError as exc:
        raise _unreadable_parquet(exc) from None
    except pl.exceptions.PanicException as exc:
        raise _reader_failed("Parquet", exc) from None


def _check_time_zones(schema: pyarrow.Schema) -> None:
    """Refuse timestamp columns in unknown time zones, which Polars cannot read (it panics)."""
    for field in schema:
        for dtype in _nested_types(field.type):
            zone = getattr(dtype, "tz", None)
            if zone and not _known_time_zone(zone):
                raise InvalidInputError(
                    f"column {field.name[:200]!r} has timestamps in the unknown time zone "
                    f"{zone[:100]!r}; use an IANA name such as 'UTC' or 'Europe/Paris'",
                    field="file",
                )


def _nested_types(dtype: pyarrow.DataType) -> list[pyarrow.DataType]:
    children = [dtype.field(i).type for i in range(dtype.num_fields)]
    return [dtype, *(nested for child in children for nested in _nested_types(child))]


def _known_time_zone(zone: str) -> bool:
    if re.fullmatch(r"[+-]\d\d:\d\d", zone):
        return True  # a fixed offset
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _check_column_names(names: list[str]) -> None:
    for name in names:
        if found := _CONTROL_CHARACTERS.search(name):
            raise InvalidInputError(
                f"column name {name[:200]!r} contains the control character {found[0]!r}; "
                "rename the column",
                field="file",
            )


def _reader_failed(fmt: str, exc: BaseException) -> InvalidInputError:
    # A panic is Polars' bug, not the user's; it is logged for us and the file is refused.
    log.warning("Polars failed on an uploaded %s file: %s", fmt, _short(exc))
    return InvalidInputError(
        f"the {fmt} file could not be read: {_short(exc)}; check that it is a valid {fmt} file",
        field="file",
    )


def _target_stats(column: pl.Series) -> dict[str, Any]:
    stats: dict[str, Any] = {"column": column.name, "distinct": column.n_unique()}
    if not column.dtype.is_float() and stats["distinct"] <= MAX_TARGET_CLASSES:
        counts = column.drop_nulls().value_counts(sort=True)
        stats["distribution"] = {str(value): count for value, count in counts.iter_rows()}
        if any("\x00" in value for value in stats["distribution"]):
            # PostgreSQL's JSON cannot hold a NUL, and a class name has no use for one.
            raise InvalidInputError(
                f"target column {column.name[:200]!r} has a value with a NUL byte; remove it",
                field="target",
            )
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


def _unreadable_parquet(exc: BaseException) -> InvalidInputError:
    return InvalidInputError(
        f"the Parquet file is damaged, not Parquet, or holds a type Polars cannot read: "
        f"{_short(exc)}",
        field="file",
    )


def _too_many_columns(limits: UploadLimits, columns: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the table has {columns} columns, over the limit GOSHEN_MAX_TABLE_COLUMNS="
        f"{limits.max_table_columns}"
    )


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
