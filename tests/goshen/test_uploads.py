"""Dataset uploads: good archives and tables are stored under server-made names; every refusal
names its limit or problem and leaves nothing in the store."""

from __future__ import annotations

import io
import json
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from PIL import Image

from goshen.db.models import DatasetKind
from goshen.errors import GoshenError, InvalidInputError, PayloadTooLargeError
from goshen.storage.local import LocalArtifactStore
from goshen.uploads.formats import UploadFormat, detect_format
from goshen.uploads.limits import UploadLimits
from goshen.uploads.manifest import IMAGES, MANIFEST, TABLE, StoredDataset
from goshen.uploads.store import store_dataset

PREFIX = "datasets/usr_1/ds_1"
LIMITS = UploadLimits(
    max_upload_bytes=10 * 1024 * 1024,
    max_archive_entries=50,
    max_uncompressed_bytes=20 * 1024 * 1024,
    max_compression_ratio=100,
    max_image_pixels=64 * 64,
    max_table_rows=1000,
    max_table_columns=20,
)


def png(size: tuple[int, int] = (8, 8), value: int = 128, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, value).save(buffer, format=fmt)
    return buffer.getvalue()


def zip_of(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_of(files: dict[str, bytes], mode: str = "w", extra: list[tarfile.TarInfo] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra:
            archive.addfile(info)
    return buffer.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "store", b"k" * 32, "http://goshen.test")


@pytest.fixture
def upload(tmp_path: Path, store: LocalArtifactStore) -> Callable[..., StoredDataset]:
    """Store `data` as an upload; a refusal must leave the store empty."""

    def run(data: bytes, limits: UploadLimits = LIMITS, **options: Any) -> StoredDataset:
        path = tmp_path / "upload"
        path.write_bytes(data)
        try:
            return store_dataset(path, store, PREFIX, limits, **options)
        except GoshenError:
            assert store.list("datasets") == []
            raise

    return run


def manifest(store: LocalArtifactStore) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(store.get(f"{PREFIX}/{MANIFEST}"))
    return found


def packed_names(store: LocalArtifactStore) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(store.get(f"{PREFIX}/{IMAGES}"))) as archive:
        return archive.getnames()


def test_zip_with_labels_csv_is_kept_under_server_made_names(
    upload: Callable[..., StoredDataset], store: LocalArtifactStore
) -> None:
    labels = b"file,label\ncat one.png,cat\n./dogs/d.jpg,dog\nb.gif,cat\n"
    data = zip_of(
        {
            "cat one.png": png(),
            "dogs/d.jpg": png(fmt="JPEG"),
            "b.gif": png(fmt="GIF"),
            "labels.csv": labels,
        }
    )
    stored = upload(data)
    assert stored.kind is DatasetKind.images and stored.format is UploadFormat.zip
    assert stored.file_count == 3
    assert stored.stats["class_counts"] == {"cat": 2, "dog": 1}
    assert stored.stats["formats"] == {"PNG": 1, "JPEG": 1, "GIF": 1}
    assert stored.stats["label_source"] == "labels.csv"
    assert "label" in stored.schema["columns"]
    assert [o.key.removeprefix(PREFIX + "/") for o in store.list(PREFIX)] == [IMAGES, MANIFEST]
    assert stored.size_bytes == sum(o.size for o in store.list(PREFIX))
    # The user's names live only in the manifest; the packed images carry server-made names.
    assert packed_names(store) == ["000000.png", "000001.jpg", "000002.gif"]
    entries = manifest(store)["entries"]
    assert [(e["source"], e["label"]) for e in entries] == [
        ("cat one.png", "cat"),
        ("dogs/d.jpg", "dog"),
        ("b.gif", "cat"),
    ]


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_tar_labels_come_from_class_folders_inside_a_wrapping_folder(
    upload: Callable[..., StoredDataset], store: LocalArtifactStore, mode: str
) -> None:
    files = {
        "digits/3/a.png": png(),
        "digits/3/b.bmp": png(fmt="BMP"),
        "digits/7/c.png": png(),
        "digits/.DS_Store": b"\x00junk",
        "__MACOSX/digits/._a.png": b"junk",
    }
    stored = upload(tar_of(files, mode))
    assert stored.format is (UploadFormat.tar if mode == "w" else UploadFormat.tar_gz)
    assert stored.stats["class_counts"] == {"3": 2, "7": 1}
    assert stored.stats["label_source"] == "folders"
    assert [e["source"] for e in manifest(store)["entries"]] == list(files)[:3]


def test_images_at_the_top_without_labels_are_unlabeled(
    upload: Callable[..., StoredDataset],
) -> None:
    stored = upload(zip_of({"a.png": png(), "b.png": png((16, 4))}))
    assert stored.stats["label_source"] is None and stored.stats["class_counts"] == {}
    assert stored.stats["width"] == {"min": 8, "max": 16}


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../x.png", "'..'"),
        ("a/../../x.png", "'..'"),
        ("/etc/x.png", "absolute path"),
        ("C:/x.png", "absolute path"),
        ("a\\..\\x.png", "backslash"),
    ],
)
@pytest.mark.parametrize("container", ["zip", "tar"])
def test_entry_names_that_could_leave_a_folder_are_refused(
    upload: Callable[..., StoredDataset], name: str, problem: str, container: str
) -> None:
    data = zip_of({name: png()}) if container == "zip" else tar_of({name: png()})
    with pytest.raises(InvalidInputError, match=problem):
        upload(data)


def test_a_nul_byte_in_a_zip_name_is_refused(upload: Callable[..., StoredDataset]) -> None:
    # zipfile cannot write a NUL, so patch one into the name in both headers.
    data = zip_of({"evil_x.png.txt": png()}).replace(b"evil_x.png.txt", b"evil_x.png\x00txt")
    with pytest.raises(InvalidInputError, match="NUL"):
        upload(data)


@pytest.mark.parametrize(
    ("kind", "problem"),
    [(tarfile.SYMTYPE, "link"), (tarfile.LNKTYPE, "link"), (tarfile.CHRTYPE, "device")],
)
def test_tar_links_and_devices_are_refused(
    upload: Callable[..., StoredDataset], kind: bytes, problem: str
) -> None:
    member = tarfile.TarInfo("b.png")
    member.type = kind
    member.linkname = "/etc/passwd"
    with pytest.raises(InvalidInputError, match=f"'b.png' is a {problem}"):
        upload(tar_of({"a.png": png()}, extra=[member]))


def test_zip_symlinks_are_refused(upload: Callable[..., StoredDataset]) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.png", png())
        link = zipfile.ZipInfo("b.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(InvalidInputError, match=r"'b.png' is a symbolic link"):
        upload(buffer.getvalue())


def test_a_zip_bomb_is_stopped_by_counting_bytes_not_trusting_headers(
    upload: Callable[..., StoredDataset],
) -> None:
    limits = replace(LIMITS, max_compression_ratio=10_000)
    bomb = zip_of({"a.png": png() + bytes(40 * 1024 * 1024)})
    # Headers that claim 100 bytes: the entry is cut short, and its CRC gives the lie away.
    size = (40 * 1024 * 1024 + len(png())).to_bytes(4, "little")
    small = bomb.replace(size, (100).to_bytes(4, "little"))
    with pytest.raises(InvalidInputError, match="not a readable zip archive"):
        upload(small, limits)
    # Headers that claim 4 GB: the bytes that come out are counted and stopped at the limit.
    huge = bomb.replace(size, b"\xf0\xff\xff\xff")
    with pytest.raises(PayloadTooLargeError, match="GOSHEN_MAX_UNCOMPRESSED_BYTES"):
        upload(huge, limits)


@pytest.mark.parametrize("mode", ["zip", "w:gz"])
def test_an_archive_expanding_past_the_ratio_is_refused(
    upload: Callable[..., StoredDataset], mode: str
) -> None:
    files = {"a.png": png() + bytes(8 * 1024 * 1024)}
    data = zip_of(files) if mode == "zip" else tar_of(files, mode)
    with pytest.raises(PayloadTooLargeError, match=r"100 times .* GOSHEN_MAX_COMPRESSION_RATIO"):
        upload(data)


@pytest.mark.parametrize("container", ["zip", "tar"])
def test_too_many_entries_are_refused(upload: Callable[..., StoredDataset], container: str) -> None:
    files = {f"{i}.png": png() for i in range(LIMITS.max_archive_entries + 1)}
    data = zip_of(files) if container == "zip" else tar_of(files)
    with pytest.raises(
        PayloadTooLargeError,
        match="more than 50 entries, over the limit GOSHEN_MAX_ARCHIVE_ENTRIES=50",
    ):
        upload(data)


def test_content_is_checked_by_magic_bytes_not_by_name(
    upload: Callable[..., StoredDataset],
) -> None:
    with pytest.raises(InvalidInputError, match=r"'x.png' is not a PNG, JPEG, BMP or GIF image"):
        upload(zip_of({"a.png": png(), "x.png": b"just some text"}))
    with pytest.raises(InvalidInputError, match=re.escape("not a .zip, .tar or .tar.gz archive")):
        upload(png())


def test_a_damaged_image_is_refused(upload: Callable[..., StoredDataset]) -> None:
    with pytest.raises(InvalidInputError, match=r"'a.png' is a damaged PNG"):
        upload(zip_of({"a.png": png((32, 32))[:60]}))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height pixels over a few bytes of image data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(10))) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_images_over_the_pixel_limit_are_refused_before_decoding(
    upload: Callable[..., StoredDataset],
) -> None:
    # Had these been decoded, the tiny data would have made them "damaged", not too large.
    with pytest.raises(PayloadTooLargeError, match="100x100 = 10000 pixels, over the limit"):
        upload(zip_of({"claims.png": png_claiming(100, 100)}))
    with pytest.raises(PayloadTooLargeError, match="GOSHEN_MAX_IMAGE_PIXELS=4096"):
        upload(zip_of({"giant.png": png_claiming(100_000, 100_000)}))
    with pytest.raises(PayloadTooLargeError, match="65x64 = 4160 pixels"):
        upload(zip_of({"wide.png": png((65, 64))}))


def test_an_upload_over_the_size_limit_is_refused(upload: Callable[..., StoredDataset]) -> None:
    limits = replace(LIMITS, max_upload_bytes=100)
    with pytest.raises(PayloadTooLargeError, match="GOSHEN_MAX_UPLOAD_BYTES=100"):
        upload(zip_of({"a.png": png()}), limits)


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"a.png": b"", "labels.csv": b"file,label\na.png,x\nmissing.png,y\n"}, "'missing.png'"),
        ({"a.png": b"", "b.png": b"", "labels.csv": b"file,label\na.png,x\n"}, "'b.png' has no"),
        ({"a.png": b"", "labels.csv": b"name,class\na.png,x\n"}, "columns file,label"),
        ({"a.png": b"", "labels.csv": b"file,label\na.png,\n"}, "line 2"),
        ({"cat/a.png": b"", "b.png": b""}, "'b.png' is at the top"),
        ({"cat/a.png": b"", "cat/labels.csv": b"", "dog/b.png": b""}, "top of the archive"),
        ({".hidden.png": b""}, "holds no PNG"),
    ],
)
def test_labels_that_do_not_fit_the_images_are_refused(
    upload: Callable[..., StoredDataset], files: dict[str, bytes], problem: str
) -> None:
    files = {name: data or png() for name, data in files.items()}
    with pytest.raises(InvalidInputError, match=problem):
        upload(zip_of(files))


def test_a_csv_table_is_parsed_typed_and_described(
    upload: Callable[..., StoredDataset], store: LocalArtifactStore
) -> None:
    csv = b"x,y,label\n1,2.5,a\n2,,b\n3,4.5,a\n"
    stored = upload(csv, target="label")
    assert stored.kind is DatasetKind.tabular and stored.format is UploadFormat.csv
    assert stored.schema == {"columns": {"x": "Int64", "y": "Float64", "label": "String"}}
    assert stored.stats["rows"] == 3 and stored.stats["nulls"]["y"] == 1
    assert stored.stats["numeric"]["x"] == {"min": 1, "max": 3, "mean": 2.0}
    assert stored.stats["target"]["distribution"] == {"a": 2, "b": 1}
    table = pl.read_parquet(io.BytesIO(store.get(f"{PREFIX}/{TABLE}")))
    assert table["y"].to_list() == [2.5, None, 4.5]


def test_a_parquet_table_is_detected_by_its_magic_bytes(
    upload: Callable[..., StoredDataset],
) -> None:
    buffer = io.BytesIO()
    pl.DataFrame({"a": [1.0, float("nan")], "b": [True, False]}).write_parquet(buffer)
    stored = upload(buffer.getvalue())
    assert stored.format is UploadFormat.parquet
    assert stored.schema == {"columns": {"a": "Float64", "b": "Boolean"}}
    # Polars skips NaN in min and max; a NaN mean becomes None, as JSON has no NaN.
    assert stored.stats["numeric"]["a"] == {"min": 1.0, "max": 1.0, "mean": None}
    json.dumps(stored.stats, allow_nan=False)


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ("rows", "more than 1000 rows, over the limit GOSHEN_MAX_TABLE_ROWS=1000"),
        ("columns", "21 columns, over the limit GOSHEN_MAX_TABLE_COLUMNS=20"),
    ],
)
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tables_over_the_row_and_column_limits_are_refused(
    upload: Callable[..., StoredDataset], table: str, problem: str, fmt: str
) -> None:
    frame = (
        pl.DataFrame({"a": range(1001)})
        if table == "rows"
        else pl.DataFrame({f"c{i}": [i] for i in range(21)})
    )
    buffer = io.BytesIO()
    frame.write_csv(buffer) if fmt == "csv" else frame.write_parquet(buffer)
    if fmt == "parquet":
        problem = problem.replace("more than 1000", "1001")
    with pytest.raises(PayloadTooLargeError, match=problem):
        upload(buffer.getvalue())


@pytest.mark.parametrize(
    ("data", "options", "problem"),
    [
        (b"", {}, "empty"),
        (b"a,b\n1,2,3,4\n", {}, "CSV file could not be read"),
        (b"a,b\n", {}, "no rows"),
        (b"PAR1 not really", {}, "Parquet file is damaged"),
        (b"a,b\n1,2\n", {"kind": DatasetKind.images}, "kind is 'images' but the file is a CSV"),
        (b"a,b\n1,2\n", {"target": "c"}, "target column 'c'"),
    ],
)
def test_bad_tables_are_refused(
    upload: Callable[..., StoredDataset], data: bytes, options: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidInputError, match=problem):
        upload(data, **options)


def test_detect_format_reads_content_not_names(tmp_path: Path) -> None:
    cases = {
        "a.csv": zip_of({"a.png": png()}),
        "a.zip": tar_of({"a.png": png()}),
        "a.tar": tar_of({"a.png": png()}, "w:gz"),
        "a.png": b"x,y\n1,2\n",
    }
    found = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        found[name] = detect_format(tmp_path / name)
    assert found == {
        "a.csv": UploadFormat.zip,
        "a.zip": UploadFormat.tar,
        "a.tar": UploadFormat.tar_gz,
        "a.png": UploadFormat.csv,
    }
