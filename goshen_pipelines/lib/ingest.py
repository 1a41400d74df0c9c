"""Datasets into the canonical Parquet that training reads, with Polars.

Images become one row each: `label` (class index; null when the dataset is unlabeled), `pixels`
(grayscale intensity as float32 in [0, 1], row-major, resized to a square `height` x `width` the
caller picks), `height`, `width`, and `source` (the image's name in the upload). Class names in
index order go into the Parquet metadata under "goshen" and into the stats; labels that are all
integers sort as numbers, so digit "3" is class 3. Tables keep their uploaded, typed columns.

Given a `report` callback, ingestion tells how far it is (lib/progress.py): images in stages
"decoding images" (files, to 90 %) and "writing parquet" (rows); tables in "reading rows" and
"writing parquet" (rows, half each).
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image

from goshen.db.models import DatasetKind
from goshen.errors import InvalidInputError
from goshen.storage import ArtifactStore
from goshen.uploads.manifest import IMAGES, MANIFEST, MANIFEST_VERSION
from goshen_pipelines.lib.digits import DIGIT_SIZE, load_digit_images, resize_images
from goshen_pipelines.lib.progress import Progress, Report

CANONICAL = "canonical.parquet"
DIGITS_CLASSES = [str(digit) for digit in range(10)]
METADATA_KEY = "goshen"
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L")


@dataclass(frozen=True)
class CanonicalDataset:
    frame: pl.DataFrame
    kind: DatasetKind
    classes: list[str]  # images: class names by label index; tables: the target's values


@dataclass(frozen=True)
class IngestResult:
    """What a canonical Parquet holds, for the asset's metadata and checks."""

    key: str
    kind: DatasetKind
    rows: int
    schema: dict[str, str]
    classes: list[str]
    class_counts: dict[str, int]
    label_balance: float | None  # the smallest class's count over the largest's; 1.0 is even
    size_bytes: int


def ingest_dataset(
    store: ArtifactStore,
    prefix: str,
    destination: str,
    *,
    image_size: int = DIGIT_SIZE,
    target: str | None = None,
    report: Report | None = None,
) -> IngestResult:
    """Read the dataset stored under `prefix` and write its canonical Parquet to `destination`;
    `report` hears how far it is, a few dozen times at most."""
    progress = Progress(report)
    dataset = read_stored_dataset(
        store, prefix, image_size=image_size, target=target, progress=progress
    )
    return write_canonical(store, destination, dataset, target=target, progress=progress)


def ingest_digits(
    store: ArtifactStore, destination: str, *, image_size: int = DIGIT_SIZE
) -> IngestResult:
    """Write the built-in digits dataset's canonical Parquet to `destination`."""
    dataset = CanonicalDataset(digits_frame(image_size), DatasetKind.images, DIGITS_CLASSES)
    return write_canonical(store, destination, dataset)


def digits_frame(image_size: int = DIGIT_SIZE) -> pl.DataFrame:
    """scikit-learn's bundled handwritten digits as the canonical image frame (no download)."""
    images, labels = load_digit_images()
    pixels = resize_images(images, image_size).reshape(len(images), -1)
    sources = [f"sklearn-digits/{index:04d}" for index in range(len(images))]
    return _image_frame(labels.tolist(), pixels, image_size, sources)


def read_stored_dataset(
    store: ArtifactStore,
    prefix: str,
    *,
    image_size: int = DIGIT_SIZE,
    target: str | None = None,
    progress: Progress | None = None,
) -> CanonicalDataset:
    """The canonical form of a dataset that goshen.uploads.store.store_dataset kept at `prefix`."""
    progress = progress or Progress()
    manifest = json.loads(store.get(f"{prefix}/{MANIFEST}"))
    if manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{prefix}/{MANIFEST} has version {manifest.get('version')!r}")
    if manifest["kind"] == DatasetKind.images:
        return _read_images(store, prefix, manifest, image_size, progress)
    table = io.BytesIO(store.get(f"{prefix}/{manifest['table']}"))
    progress.stage("reading rows", _row_count(table), "rows", until=50)
    frame = pl.read_parquet(table)
    progress.advance(frame.height)
    classes = [] if target is None else _target_classes(frame, target)
    return CanonicalDataset(frame, DatasetKind.tabular, classes)


def write_canonical(
    store: ArtifactStore,
    key: str,
    dataset: CanonicalDataset,
    *,
    target: str | None = None,
    progress: Progress | None = None,
) -> IngestResult:
    """Write the dataset as Parquet at `key`, its classes in the metadata; returns its stats."""
    progress = progress or Progress()
    progress.stage("writing parquet", dataset.frame.height, "rows", until=100)
    metadata = {"kind": dataset.kind.value, "classes": dataset.classes, "target": target}
    with tempfile.TemporaryDirectory(prefix="goshen-ingest-") as workdir:
        path = Path(workdir) / CANONICAL
        dataset.frame.write_parquet(path, metadata={METADATA_KEY: json.dumps(metadata)})
        with path.open("rb") as file:
            stored = store.put(key, file, content_type="application/vnd.apache.parquet")
    counts = _class_counts(dataset, target)
    progress.advance(dataset.frame.height)
    return IngestResult(
        key=key,
        kind=dataset.kind,
        rows=dataset.frame.height,
        schema={name: str(dtype) for name, dtype in dataset.frame.schema.items()},
        classes=dataset.classes,
        class_counts=counts,
        label_balance=min(counts.values()) / max(counts.values()) if counts else None,
        size_bytes=stored.size,
    )


def read_canonical(store: ArtifactStore, key: str) -> CanonicalDataset:
    """A canonical Parquet written by `write_canonical`, with its kind and classes."""
    data = io.BytesIO(store.get(key))
    metadata = json.loads(pl.read_parquet_metadata(data)[METADATA_KEY])
    data.seek(0)
    return CanonicalDataset(
        pl.read_parquet(data), DatasetKind(metadata["kind"]), metadata["classes"]
    )


def _read_images(
    store: ArtifactStore,
    prefix: str,
    manifest: dict[str, Any],
    image_size: int,
    progress: Progress,
) -> CanonicalDataset:
    entries = {entry["file"]: entry for entry in manifest["entries"]}
    progress.stage("decoding images", len(entries), "files", until=90)
    classes = _sorted_classes({e["label"] for e in entries.values() if e["label"] is not None})
    index = {name: position for position, name in enumerate(classes)}
    labels, pixels, sources = [], [], []
    with tempfile.TemporaryFile() as packed:
        for chunk in store.stream(f"{prefix}/{manifest['images']}"):
            packed.write(chunk)
        packed.seek(0)
        with tarfile.open(fileobj=packed, mode="r:") as archive:
            for member in archive:
                entry = entries[member.name]
                image_file = archive.extractfile(member)
                assert image_file is not None, f"{IMAGES} holds only regular files"
                with Image.open(image_file, formats=[entry["format"]]) as image:
                    pixels.append(_grayscale_pixels(image, image_size))
                labels.append(None if entry["label"] is None else index[entry["label"]])
                sources.append(entry["source"])
                progress.advance()
    frame = _image_frame(labels, np.stack(pixels), image_size, sources)
    return CanonicalDataset(frame, DatasetKind.images, classes)


def _row_count(table: io.BytesIO) -> int:
    """The rows of a Parquet table, from its footer; `table` is left at its start."""
    rows: int = pl.scan_parquet(table).select(pl.len()).collect().item()
    table.seek(0)
    return rows


def _grayscale_pixels(image: Image.Image, size: int) -> np.ndarray:
    """The image as grayscale float32 in [0, 1], resized to size x size and flattened."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # Converting these to 8-bit "L" clips everything above 255 to white; scale them instead.
        values = np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
    else:
        values = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    resized = Image.fromarray(values).resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0).reshape(-1)


def _image_frame(
    labels: list[int | None], pixels: np.ndarray, size: int, sources: list[str]
) -> pl.DataFrame:
    rows = len(labels)
    return pl.DataFrame(
        {
            "label": pl.Series(labels, dtype=pl.Int64),
            "pixels": pl.Series(pixels.astype(np.float32)).cast(pl.List(pl.Float32)),
            "height": pl.Series([size] * rows, dtype=pl.Int32),
            "width": pl.Series([size] * rows, dtype=pl.Int32),
            "source": pl.Series(sources, dtype=pl.String),
        }
    )


def _sorted_classes(labels: set[str]) -> list[str]:
    if all(_is_integer(label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _is_integer(text: str) -> bool:
    return text.removeprefix("-").isdigit()


def _target_classes(frame: pl.DataFrame, target: str) -> list[str]:
    if target not in frame.columns:
        raise InvalidInputError(
            f"target column {target!r} is not in the table; it has {frame.columns[:20]}",
            field="target",
        )
    if frame[target].dtype.is_float():
        return []  # a regression target has no classes
    return _sorted_classes(set(frame[target].drop_nulls().cast(pl.String).to_list()))


def _class_counts(dataset: CanonicalDataset, target: str | None) -> dict[str, int]:
    if not dataset.classes:
        return {}
    if dataset.kind is DatasetKind.images:
        counts = dataset.frame["label"].drop_nulls().value_counts()
        by_index = dict(counts.iter_rows())
        return {name: by_index.get(index, 0) for index, name in enumerate(dataset.classes)}
    assert target is not None, "tables have classes only when a target is given"
    values = dataset.frame[target].drop_nulls().cast(pl.String).value_counts()
    by_value = dict(values.iter_rows())
    return {name: by_value.get(name, 0) for name in dataset.classes}
