"""Ingest: stored uploads and the built-in digits become the same canonical Parquet."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from PIL import Image

from goshen.config import Settings
from goshen.db.models import DatasetKind
from goshen.errors import InvalidInputError
from goshen.storage.local import LocalArtifactStore
from goshen.uploads.limits import UploadLimits
from goshen.uploads.store import store_dataset
from goshen_pipelines.lib.ingest import (
    DIGITS_CLASSES,
    digits_frame,
    ingest_dataset,
    ingest_digits,
    read_canonical,
)

PREFIX = "datasets/usr_1/ds_1"
DESTINATION = f"{PREFIX}/canonical.parquet"
CANONICAL_SCHEMA = {
    "label": pl.Int64,
    "pixels": pl.List(pl.Float32),
    "height": pl.Int32,
    "width": pl.Int32,
    "source": pl.String,
}


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "store", b"k" * 32, "http://goshen.test")


@pytest.fixture
def stored(tmp_path: Path, store: LocalArtifactStore) -> Callable[[bytes], None]:
    """Store an upload under PREFIX, as the API does."""

    def run(data: bytes) -> None:
        path = tmp_path / "upload"
        path.write_bytes(data)
        limits = UploadLimits.from_settings(Settings(_env_file=None))
        store_dataset(path, store, PREFIX, limits)

    return run


def image_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_digits_frame_is_the_canonical_frame_of_the_bundled_digits() -> None:
    frame = digits_frame()
    assert dict(frame.schema) == CANONICAL_SCHEMA
    assert frame.height == 1797
    assert sorted(frame["label"].unique().to_list()) == list(range(10))
    pixels = np.array(frame["pixels"].to_list())
    assert pixels.shape == (1797, 64) and pixels.min() == 0.0 and pixels.max() == 1.0
    assert frame["height"].unique().to_list() == [8] and frame["width"].unique().to_list() == [8]
    larger = digits_frame(16)
    assert larger["pixels"].list.len().unique().to_list() == [256]
    assert larger["height"].unique().to_list() == [16]


def test_ingest_digits_writes_parquet_with_classes_and_balance(store: LocalArtifactStore) -> None:
    result = ingest_digits(store, "datasets/builtin/digits/canonical.parquet")
    assert result.rows == 1797 and result.kind is DatasetKind.images
    assert result.classes == DIGITS_CLASSES
    assert sum(result.class_counts.values()) == 1797
    assert result.class_counts["0"] == 178  # scikit-learn's count of zeros
    assert 0.9 < result.label_balance <= 1.0
    assert result.size_bytes == store.size(result.key)
    canonical = read_canonical(store, result.key)
    assert canonical.classes == DIGITS_CLASSES
    assert canonical.frame.equals(digits_frame())


def test_an_image_archive_becomes_grayscale_pixels_with_class_indices(
    store: LocalArtifactStore, stored: Callable[[bytes], None]
) -> None:
    sixteen_bit = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    files = {
        "set/10/white.png": image_bytes(Image.new("L", (8, 8), 255)),
        "set/3/black.png": image_bytes(Image.new("L", (16, 16), 0)),
        "set/3/red.png": image_bytes(Image.new("RGB", (8, 4), (255, 0, 0))),
        "set/7/half.png": image_bytes(sixteen_bit),
    }
    stored(zip_of(files))
    result = ingest_dataset(store, PREFIX, DESTINATION, image_size=4)
    # Integer labels sort as numbers: "10" is after "7".
    assert result.classes == ["3", "7", "10"]
    assert result.class_counts == {"3": 2, "7": 1, "10": 1}
    assert result.label_balance == 0.5
    frame = read_canonical(store, DESTINATION).frame
    assert dict(frame.schema) == CANONICAL_SCHEMA
    assert frame["source"].to_list() == list(files)
    assert frame["label"].to_list() == [2, 0, 0, 1]
    pixels = np.array(frame["pixels"].to_list())
    assert pixels.shape == (4, 16)
    np.testing.assert_allclose(pixels[0], 1.0)
    np.testing.assert_allclose(pixels[1], 0.0)
    np.testing.assert_allclose(pixels[2], 76 / 255, atol=1e-6)  # ITU-R 601 luma of pure red
    np.testing.assert_allclose(pixels[3], 0.5, atol=1e-3)  # 16-bit scaled, not clipped to white


def test_an_unlabeled_archive_has_null_labels_and_no_classes(
    store: LocalArtifactStore, stored: Callable[[bytes], None]
) -> None:
    stored(zip_of({"a.png": image_bytes(Image.new("L", (8, 8), 10))}))
    result = ingest_dataset(store, PREFIX, DESTINATION, image_size=8)
    assert result.classes == [] and result.class_counts == {} and result.label_balance is None
    assert read_canonical(store, DESTINATION).frame["label"].to_list() == [None]


def test_a_table_keeps_its_typed_columns_and_describes_its_target(
    store: LocalArtifactStore, stored: Callable[[bytes], None]
) -> None:
    stored(b"x,y,label\n1,0.5,b\n2,1.5,a\n3,2.5,b\n4,,b\n")
    result = ingest_dataset(store, PREFIX, DESTINATION, target="label")
    assert result.kind is DatasetKind.tabular and result.rows == 4
    assert result.schema == {"x": "Int64", "y": "Float64", "label": "String"}
    assert result.classes == ["a", "b"] and result.class_counts == {"a": 1, "b": 3}
    assert result.label_balance == pytest.approx(1 / 3)
    canonical = read_canonical(store, DESTINATION)
    assert canonical.kind is DatasetKind.tabular and canonical.frame["y"].null_count() == 1

    regression = ingest_dataset(store, PREFIX, DESTINATION, target="y")
    assert regression.classes == [] and regression.label_balance is None
    with pytest.raises(InvalidInputError, match="'z' is not in the table"):
        ingest_dataset(store, PREFIX, DESTINATION, target="z")


def _reports_of(store: LocalArtifactStore, **options: Any) -> list[dict[str, Any]]:
    reports: list[dict[str, Any]] = []
    ingest_dataset(store, PREFIX, DESTINATION, report=reports.append, **options)
    return reports


def _assert_moves_forward_to_100(reports: list[dict[str, Any]]) -> None:
    percents = [report["percent"] for report in reports]
    assert percents == sorted(percents) and percents[0] == 0 and percents[-1] == 100
    assert len(set(percents)) > 2  # it moved between the start and the end


def test_an_image_archive_reports_its_files_decoded_then_its_rows_written(
    store: LocalArtifactStore, stored: Callable[[bytes], None]
) -> None:
    files = {f"set/{i % 2}/{i}.png": image_bytes(Image.new("L", (8, 8), i)) for i in range(200)}
    stored(zip_of(files))
    reports = _reports_of(store, image_size=4)
    _assert_moves_forward_to_100(reports)
    decoding = [r for r in reports if r["stage"] == "decoding images"]
    assert {(r["unit"], r["total"]) for r in decoding} == {("files", 200)}
    done = [r["done"] for r in decoding]
    assert done == sorted(done) and done[0] == 0 and done[-1] == 200
    # Every 5 % at most, not per file: a report per file would be 200 of them.
    assert len(decoding) <= 22
    assert reports[-1] == {
        "stage": "writing parquet",
        "done": 200,
        "total": 200,
        "unit": "rows",
        "percent": 100,
    }


def test_a_table_reports_its_rows_read_then_written(
    store: LocalArtifactStore, stored: Callable[[bytes], None]
) -> None:
    stored(b"x,label\n" + b"".join(b"%d,%d\n" % (i, i % 3) for i in range(1000)))
    reports = _reports_of(store, target="label")
    _assert_moves_forward_to_100(reports)
    assert [(r["stage"], r["done"], r["unit"]) for r in reports] == [
        ("reading rows", 0, "rows"),
        ("reading rows", 1000, "rows"),
        ("writing parquet", 0, "rows"),
        ("writing parquet", 1000, "rows"),
    ]
    assert {r["total"] for r in reports} == {1000}
