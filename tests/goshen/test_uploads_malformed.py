"""Malformed uploads: every parse path that bad content can break ends in an InvalidInputError
that says what to fix, never in a library's exception, and leaves nothing in the store."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from goshen.errors import GoshenError, InvalidInputError
from goshen.storage.local import LocalArtifactStore
from goshen.uploads.limits import UploadLimits
from goshen.uploads.manifest import StoredDataset
from goshen.uploads.store import store_dataset
from tests.goshen.test_uploads import png, zip_of

PREFIX = "datasets/usr_1/ds_1"
LIMITS = UploadLimits(
    max_upload_bytes=16 * 1024 * 1024,
    max_archive_entries=50,
    max_uncompressed_bytes=64 * 1024 * 1024,
    max_compression_ratio=100,
    max_image_pixels=64 * 64,
    max_table_rows=100_000,
    max_table_columns=20,
)
MANY_ROWS = b"a,t\n" + b"1,x\n" * 20_000  # past the 64 KiB that format detection reads


def parquet_of(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


GOOD_PARQUET = parquet_of(pa.table({"a": list(range(1000)), "b": ["x"] * 1000}))


def tar_with_raw_names(names: list[bytes]) -> bytes:
    """A tar of one PNG per name, each name written as raw bytes (tarfile insists on text)."""
    data, out = png(), b""
    for name in names:
        info = tarfile.TarInfo("placeholder")
        info.size = len(data)
        header = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
        header[0:100] = name.ljust(100, b"\x00")
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\x00 " % sum(header)
        out += bytes(header) + data + bytes(-len(data) % 512)
    return out + bytes(1024)


def zip_with_bad_utf8_name(local_header_only: bool = False) -> bytes:
    """A zip whose entry name is flagged UTF-8 (bit 11) but holds bytes that are not UTF-8, in
    both its headers or only in the local one, which zipfile reads when the entry is opened."""
    data = zip_of({"ab.png": png()}).replace(
        b"ab.png", b"\xff\xfe.png", 1 if local_header_only else 2
    )
    flags = bytearray(data)
    headers = (
        ((b"PK\x03\x04", 6),) if local_header_only else ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8))
    )
    for signature, flags_at in headers:
        flags[flags.find(signature) + flags_at + 1] |= 0x08
    return bytes(flags)


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "store", b"k" * 32, "http://goshen.test")


@pytest.fixture
def upload(tmp_path: Path, store: LocalArtifactStore) -> Callable[..., StoredDataset]:
    """Store `data` as an upload; a refusal must leave the store empty."""

    def run(data: bytes, **options: Any) -> StoredDataset:
        path = tmp_path / "upload"
        path.write_bytes(data)
        try:
            return store_dataset(path, store, PREFIX, LIMITS, **options)
        except GoshenError:
            assert store.list("datasets") == []
            raise

    return run


CASES: dict[str, tuple[bytes, dict[str, str], str]] = {
    # CSV tables: Polars reads the table; the csv module reads the header, within its field limit.
    "csv-header-over-128-KiB": (
        b"a" * 200_000 + b"\n1\n",
        {},
        "longer than 131072 bytes, the limit MAX_CSV_HEADER_BYTES=131072",
    ),
    "10-MB-of-0x01": (b"\x01" * 10_000_000, {}, "its byte 0x01 at offset 0 is not text"),
    "csv-header-not-utf8": (b"a" * 70_000 + b"\xff,b\n1,2\n", {}, "header is not UTF-8"),
    "csv-column-name-nul": (b"a" * 70_000 + b"\x00,b\n1,2\n", {}, "the control character '\\x00'"),
    "csv-body-not-utf8": (MANY_ROWS + b"1,\xff\n", {}, "could not be read: invalid utf-8"),
    "csv-target-nul": (MANY_ROWS + b"1,x\x00y\n", {"target": "t"}, "a value with a NUL byte"),
    # Parquet: not Parquet, cut short, or holding what Polars or PostgreSQL cannot take.
    "parquet-not-parquet": (
        b"PAR1" + bytes(8) + b"PAR1",
        {},
        "the Parquet file is damaged, not Parquet",
    ),
    "parquet-truncated": (
        GOOD_PARQUET[: len(GOOD_PARQUET) // 2],
        {},
        "the Parquet file is damaged, not Parquet",
    ),
    "parquet-footer-lies": (
        b"PAR1" + b"x" * 20 + (10**9).to_bytes(4, "little") + b"PAR1",
        {},
        "the Parquet file is damaged, not Parquet",
    ),
    "parquet-unknown-time-zone": (
        parquet_of(pa.table({"t": pa.array([1, 2], pa.timestamp("ns", "Mars/Olympus"))})),
        {},
        "unknown time zone 'Mars/Olympus'; use an IANA name",
    ),
    "parquet-column-name-nul": (
        parquet_of(pa.table({"a\x00b": [1, 2]})),
        {},
        "column name 'a\\x00b' contains the control character '\\x00'",
    ),
    "parquet-target-nul": (
        parquet_of(pa.table({"t": ["x\x00y", "z"]})),
        {"target": "t"},
        "target column 't' has a value with a NUL byte",
    ),
    # labels.csv inside an image archive.
    "labels-huge-field": (
        zip_of({"a.png": png(), "labels.csv": b"file,label\na.png," + b"x" * 200_000 + b"\n"}),
        {},
        "at most 131072 characters",
    ),
    "labels-huge-header": (
        zip_of({"a.png": png(), "labels.csv": b"f" * 200_000 + b"\n"}),
        {},
        "at most 131072 characters",
    ),
    "labels-not-utf8": (
        zip_of({"a.png": png(), "labels.csv": b"file,label\na.png,\xff\n"}),
        {},
        "labels.csv is not UTF-8 text (byte 17)",
    ),
    "labels-nul": (
        zip_of({"a.png": png(), "labels.csv": b"file,label\na.png,c\x00t\n"}),
        {},
        "labels.csv contains a NUL byte (at offset 18)",
    ),
    "labels-control-character": (
        zip_of({"a.png": png(), "labels.csv": b'file,label\na.png,"c\nt"\n'}),
        {},
        "label 'c\\nt' contains a control character",
    ),
    # Images that lie about their format, and archive entries with odd names.
    "png-magic-over-a-jpeg": (
        zip_of({"a.png": b"\x89PNG\r\n\x1a\n" + png(fmt="JPEG")}),
        {},
        "image 'a.png' starts like a PNG file but is not a readable PNG image",
    ),
    "gif-magic-only": (
        zip_of({"a.gif": b"GIF89a"}),
        {},
        "'a.gif' starts like a GIF file but is not a readable GIF image",
    ),
    "zip-name-flagged-utf8-but-not": (zip_with_bad_utf8_name(), {}, "is marked UTF-8 but is not"),
    "zip-local-name-flagged-utf8-but-not": (
        zip_with_bad_utf8_name(local_header_only=True),
        {},
        "is marked UTF-8 but is not",
    ),
    "tar-name-not-utf8": (tar_with_raw_names([b"\xff.png"]), {}, "is not valid UTF-8"),
    "tar-folder-not-utf8": (
        tar_with_raw_names([b"c\xffat/a.png", b"dog/b.png"]),
        {},
        "is not valid UTF-8",
    ),
}


@pytest.mark.parametrize(("data", "options", "problem"), CASES.values(), ids=CASES.keys())
def test_malformed_uploads_are_refused_saying_what_is_wrong(
    upload: Callable[..., StoredDataset], data: bytes, options: dict[str, str], problem: str
) -> None:
    with pytest.raises(InvalidInputError) as refused:
        upload(data, **options)
    assert problem in str(refused.value)
    assert refused.value.field in {"file", "target"}
    assert "/tmp" not in str(refused.value)  # no server paths in what the user reads


def test_a_header_just_within_the_limit_is_read(upload: Callable[..., StoredDataset]) -> None:
    names = [f"c{i}_" + "x" * 6400 for i in range(20)]
    header = ",".join(names).encode()
    assert 120 * 1024 < len(header) < 128 * 1024
    upload(header + b"\n" + b"1," * 19 + b"1\n")


def test_a_fixed_offset_time_zone_is_read(upload: Callable[..., StoredDataset]) -> None:
    times = pa.array([1, 2], pa.timestamp("ms", "+02:00"))
    stored = upload(parquet_of(pa.table({"t": times})))
    assert stored.schema["columns"]["t"].startswith("Datetime(time_unit='ms'")


@pytest.mark.parametrize(
    ("reader", "data", "problem"),
    [
        ("read_csv", b"a\n1\n", "the CSV file could not be read"),
        ("read_parquet", GOOD_PARQUET, "the Parquet file could not be read"),
    ],
)
def test_a_polars_panic_on_an_upload_is_refused_as_unreadable(
    upload: Callable[..., StoredDataset],
    monkeypatch: pytest.MonkeyPatch,
    reader: str,
    data: bytes,
    problem: str,
) -> None:
    def panic(*args: object, **kwargs: object) -> None:
        raise pl.exceptions.PanicException("called `Option::unwrap()` on a `None` value")

    monkeypatch.setattr(pl, reader, panic)
    with pytest.raises(InvalidInputError, match=problem):
        upload(data)
