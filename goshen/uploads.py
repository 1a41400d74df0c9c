"""Dataset uploads: what a user may upload, checked against the limits before anything is kept.

An upload is an image archive (.zip, .tar or .tar.gz) or a table (Parquet or UTF-8 CSV), told
apart by their first bytes, never by their names. `store_dataset` keeps it under server-made names:

    {prefix}/manifest.json   what the dataset holds; the original file names live only here
    {prefix}/images.tar      image archives: every image, renamed 000000.png, 000001.jpg, ...
    {prefix}/table.parquet   tables: the parsed, typed table

Images are PNG, JPEG, BMP or GIF by their magic bytes, within GOSHEN_MAX_IMAGE_PIXELS (read from
the header before decoding). Their labels come from a top-level `labels.csv` with columns
`file,label` (`file` as named in the archive, relative to labels.csv), or else from the folder each
image sits in, as torchvision's ImageFolder does: `cat/1.png` is a "cat". One folder wrapping
everything, as zipping a folder makes, is not a label. Images all at the top and no labels.csv
make an unlabeled dataset. Hidden files (`.DS_Store`) and `__MACOSX/` are skipped; every other
file must be an image.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import shutil
import struct
import tarfile
import tempfile
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, fields
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow
import pyarrow.parquet as pq
from PIL import Image

from goshen.archives import ArchiveFile, ArchiveFormat, ArchiveLimits, archive_files, archive_format
from goshen.config import Settings
from goshen.db.models import DatasetKind
from goshen.errors import InvalidInputError, PayloadTooLargeError
from goshen.storage import ArtifactStore

MANIFEST = "manifest.json"
IMAGES = "images.tar"
TABLE = "table.parquet"
LABELS_CSV = "labels.csv"
MANIFEST_VERSION = 1
IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif"}
MAX_LABELS_CSV_BYTES = 32 * 1024 * 1024
MAX_TARGET_CLASSES = 100  # a target with more distinct values gets no distribution in the stats
_IMAGE_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
_SNIFF_BYTES = 64 * 1024
# An image archive's schema: the columns of its manifest's entries.
_IMAGE_COLUMNS = {
    "source": "String",
    "label": "String",
    "format": "String",
    "width": "Int64",
    "height": "Int64",
}


class UploadFormat(StrEnum):
    zip = "zip"
    tar = "tar"
    tar_gz = "tar.gz"
    parquet = "parquet"
    csv = "csv"

    @property
    def kind(self) -> DatasetKind:
        tables = (UploadFormat.parquet, UploadFormat.csv)
        return DatasetKind.tabular if self in tables else DatasetKind.images


@dataclass(frozen=True)
class UploadLimits:
    """The upload limits of settings, one field per GOSHEN_MAX_* setting of the same name."""

    max_upload_bytes: int
    max_archive_entries: int
    max_uncompressed_bytes: int
    max_compression_ratio: int
    max_image_pixels: int
    max_table_rows: int
    max_table_columns: int

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadLimits:
        return cls(**{field.name: getattr(settings, field.name) for field in fields(cls)})

    @property
    def archive(self) -> ArchiveLimits:
        return ArchiveLimits(
            self.max_archive_entries, self.max_uncompressed_bytes, self.max_compression_ratio
        )


@dataclass(frozen=True)
class StoredDataset:
    """What `store_dataset` kept: the fields of the dataset's row."""

    kind: DatasetKind
    format: UploadFormat
    size_bytes: int
    file_count: int
    schema: dict[str, Any]  # {"columns": {name: dtype}}
    stats: dict[str, Any]


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def store_dataset(
    path: Path,
    store: ArtifactStore,
    prefix: str,
    limits: UploadLimits,
    *,
    kind: DatasetKind | None = None,
    target: str | None = None,
) -> StoredDataset:
    """Check the upload at `path` and store it under `prefix`; a refusal leaves nothing there."""
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise PayloadTooLargeError(
            f"the upload has {size} bytes, over the limit GOSHEN_MAX_UPLOAD_BYTES="
            f"{limits.max_upload_bytes}"
        )
    fmt = detect_format(path)
    if kind is not None and kind is not fmt.kind:
        raise InvalidInputError(
            f"kind is {kind.value!r} but the file is {_described(fmt)}", field="kind"
        )
    if target is not None and fmt.kind is DatasetKind.images:
        raise InvalidInputError(
            "target names a table column; image archives have none", field="target"
        )
    try:
        with tempfile.TemporaryDirectory(prefix="goshen-dataset-") as workdir:
            if fmt.kind is DatasetKind.images:
                return _store_images(path, fmt, store, prefix, limits, Path(workdir))
            return _store_table(path, fmt, store, prefix, limits, Path(workdir), target)
    except BaseException:
        store.delete_prefix(prefix)
        raise


def detect_format(path: Path) -> UploadFormat:
    """The upload's format from its first bytes; refuses anything else."""
    with path.open("rb") as file:
        head = file.read(_SNIFF_BYTES)
    if not head:
        raise InvalidInputError("the file is empty", field="file")
    archive = archive_format(head)
    if archive is not None:
        return UploadFormat(archive.value)
    if head.startswith(b"PAR1"):
        return UploadFormat.parquet
    if b"\x00" not in head and _is_utf8(head):
        return UploadFormat.csv
    found = f", it looks like a {image_format(head)} image" if image_format(head) else ""
    raise InvalidInputError(
        f"the file is not a .zip, .tar or .tar.gz archive of images, a CSV or a Parquet table "
        f"(checked by its first bytes, not its name){found}",
        field="file",
    )


def image_format(head: bytes) -> str | None:
    """PNG, JPEG, BMP or GIF by magic bytes, or None."""
    return next((fmt for magic, fmt in _IMAGE_MAGIC.items() if head.startswith(magic)), None)


def check_image(path: Path, name: str, max_pixels: int) -> ImageInfo:
    """Check that a file is an allowed image within the pixel limit, then decode it once."""
    shown = repr(name[:200])
    with path.open("rb") as file:
        fmt = image_format(file.read(16))
        if fmt is None:
            raise InvalidInputError(
                f"archive entry {shown} is not a PNG, JPEG, BMP or GIF image "
                "(checked by its first bytes, not its name)",
                field="file",
            )
        file.seek(0)
        try:
            # `formats` keeps PIL to the allowed decoders; opening reads the header only.
            with Image.open(file, formats=[fmt]) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise PayloadTooLargeError(
                        f"image {shown} has {width}x{height} = {width * height} pixels, over the "
                        f"limit GOSHEN_MAX_IMAGE_PIXELS={max_pixels}"
                    )
                image.load()  # catches truncated and corrupt images now, not at training time
        except Image.DecompressionBombError as exc:
            raise PayloadTooLargeError(
                f"image {shown} is too large to open ({exc}); the limit is "
                f"GOSHEN_MAX_IMAGE_PIXELS={max_pixels}"
            ) from None
        except _DECODE_ERRORS as exc:
            raise InvalidInputError(
                f"image {shown} is a damaged {fmt} file ({str(exc)[:200]})", field="file"
            ) from None
    return ImageInfo(fmt, width, height)


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


def _store_images(
    path: Path,
    fmt: UploadFormat,
    store: ArtifactStore,
    prefix: str,
    limits: UploadLimits,
    workdir: Path,
) -> StoredDataset:
    entries: list[dict[str, Any]] = []
    labels_files: dict[str, bytes] = {}
    packed_path = workdir / IMAGES
    files = archive_files(path, ArchiveFormat(fmt.value), limits.archive)
    with closing(files), tarfile.open(packed_path, "w") as packed:
        for entry in files:
            if _skipped(entry.name):
                continue
            if entry.name.rsplit("/", 1)[-1] == LABELS_CSV and entry.name.count("/") <= 1:
                labels_files[entry.name] = _read_labels_file(entry)
                continue
            entries.append(_pack_image(entry, len(entries), packed, workdir, limits))
    if not entries:
        raise InvalidInputError("the archive holds no PNG, JPEG, BMP or GIF images", field="file")
    labels, label_source = _labels([e["source"] for e in entries], labels_files)
    for entry, label in zip(entries, labels, strict=True):
        entry["label"] = label
    manifest = {
        "version": MANIFEST_VERSION,
        "kind": DatasetKind.images.value,
        "format": fmt.value,
        "images": IMAGES,
        "label_source": label_source,
        "entries": entries,
    }
    with packed_path.open("rb") as file:
        stored = store.put(f"{prefix}/{IMAGES}", file, content_type="application/x-tar")
    size = stored.size + _put_manifest(store, prefix, manifest)
    return StoredDataset(
        DatasetKind.images,
        fmt,
        size,
        len(entries),
        {"columns": _IMAGE_COLUMNS},
        _image_stats(entries, label_source),
    )


def _skipped(name: str) -> bool:
    """Whether an entry is operating-system clutter: hidden files and macOS resource forks."""
    parts = name.split("/")
    return parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts)


def _read_labels_file(entry: ArchiveFile) -> bytes:
    data = entry.stream.read(MAX_LABELS_CSV_BYTES + 1)
    if len(data) > MAX_LABELS_CSV_BYTES:
        raise PayloadTooLargeError(
            f"{entry.name[:200]!r} is larger than {MAX_LABELS_CSV_BYTES} bytes, the most a "
            "labels file may hold"
        )
    return data


def _pack_image(
    entry: ArchiveFile, index: int, packed: tarfile.TarFile, workdir: Path, limits: UploadLimits
) -> dict[str, Any]:
    """Check one image and add it to the packed archive under a server-made name."""
    scratch = workdir / "entry"
    with scratch.open("wb") as out:
        shutil.copyfileobj(entry.stream, out)
    info = check_image(scratch, entry.name, limits.max_image_pixels)
    stored_name = f"{index:06d}{IMAGE_FORMATS[info.format]}"
    member = tarfile.TarInfo(stored_name)
    member.size = scratch.stat().st_size
    member.mode = 0o644
    with scratch.open("rb") as file:
        packed.addfile(member, file)
    return {
        "file": stored_name,
        "source": entry.name,
        "format": info.format,
        "width": info.width,
        "height": info.height,
    }


def _labels(
    sources: list[str], labels_files: dict[str, bytes]
) -> tuple[list[str | None], str | None]:
    """Each image's label and where the labels came from: labels.csv, folders, or nowhere."""
    root = _wrapping_folder([*sources, *labels_files])
    relative = [source.removeprefix(root) for source in sources]
    stray = sorted(name for name in labels_files if name != root + LABELS_CSV)
    if stray:
        raise InvalidInputError(
            f"{stray[0][:200]!r}: labels.csv must sit at the top of the archive", field="file"
        )
    if labels_files:
        return _labels_from_csv(relative, labels_files[root + LABELS_CSV]), LABELS_CSV
    in_folders = ["/" in name for name in relative]
    if all(in_folders):
        return [name.split("/", 1)[0] for name in relative], "folders"
    if any(in_folders):
        loose = relative[in_folders.index(False)]
        raise InvalidInputError(
            f"image {loose[:200]!r} is at the top of the archive while others sit in class "
            "folders; put every image in a class folder, or add a labels.csv",
            field="file",
        )
    return [None] * len(relative), None


def _wrapping_folder(names: list[str]) -> str:
    """The one folder every entry sits in (as zipping a folder makes) with its '/', or ''."""
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1 and all("/" in name for name in names):
        return tops.pop() + "/"
    return ""


def _labels_from_csv(images: list[str], data: bytes) -> list[str | None]:
    table = _parse_labels_csv(data)
    known = set(images)
    missing = [name for name in table if name not in known]
    if missing:
        raise InvalidInputError(
            f"labels.csv names {missing[0][:200]!r}, which is not an image in the archive"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            field="file",
        )
    unlabeled = [name for name in images if name not in table]
    if unlabeled:
        raise InvalidInputError(
            f"image {unlabeled[0][:200]!r} has no row in labels.csv"
            + (f" (and {len(unlabeled) - 1} more)" if len(unlabeled) > 1 else ""),
            field="file",
        )
    return [table[name] for name in images]


def _parse_labels_csv(data: bytes) -> dict[str, str]:
    """labels.csv as {file: label}; needs a header with `file` and `label` columns."""
    try:
        rows = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        if rows.fieldnames is None or not {"file", "label"} <= set(rows.fieldnames):
            raise InvalidInputError(
                "labels.csv needs a header row with the columns file,label", field="file"
            )
        table: dict[str, str] = {}
        for line, row in enumerate(rows, start=2):
            name = (row["file"] or "").strip().removeprefix("./")
            label = (row["label"] or "").strip()
            if not name or not label:
                raise InvalidInputError(
                    f"labels.csv line {line} needs a file and a label", field="file"
                )
            if name in table:
                raise InvalidInputError(f"labels.csv names {name[:200]!r} twice", field="file")
            table[name] = label
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"labels.csv is not UTF-8 CSV ({exc})", field="file") from None
    return table


def _image_stats(entries: list[dict[str, Any]], label_source: str | None) -> dict[str, Any]:
    widths = [entry["width"] for entry in entries]
    heights = [entry["height"] for entry in entries]
    counts = Counter(entry["label"] for entry in entries if entry["label"] is not None)
    return {
        "images": len(entries),
        "formats": dict(Counter(entry["format"] for entry in entries)),
        "width": {"min": min(widths), "max": max(widths)},
        "height": {"min": min(heights), "max": max(heights)},
        "label_source": label_source,
        "class_counts": dict(sorted(counts.items())),
    }


def _store_table(
    path: Path,
    fmt: UploadFormat,
    store: ArtifactStore,
    prefix: str,
    limits: UploadLimits,
    workdir: Path,
    target: str | None,
) -> StoredDataset:
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
    size = stored.size + _put_manifest(store, prefix, manifest)
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


def _put_manifest(store: ArtifactStore, prefix: str, manifest: dict[str, Any]) -> int:
    data = json.dumps(manifest, ensure_ascii=False).encode()
    return store.put(f"{prefix}/{MANIFEST}", data, content_type="application/json").size


def _is_utf8(head: bytes) -> bool:
    # The sniffed bytes may end inside a character; only a real error counts.
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _json_number(value: object) -> float | int | None:
    """A statistic as JSON can hold it: NaN, infinities and empty columns become None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float | Decimal) and math.isfinite(value):
        return float(value)
    return None


def _described(fmt: UploadFormat) -> str:
    names = {UploadFormat.parquet: "a Parquet table", UploadFormat.csv: "a CSV table"}
    return names.get(fmt, f"a {fmt.value} archive of images")


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
