"""Image datasets as training arrays: the class names travel with the labels, in index order."""

from __future__ import annotations

import polars as pl

from goshen.db.models import DatasetKind
from goshen_pipelines.lib.arrays import image_arrays
from goshen_pipelines.lib.ingest import DIGITS_CLASSES, CanonicalDataset, digits_frame


def test_a_labeled_dataset_gives_its_class_names_by_index() -> None:
    frame = digits_frame().head(20)
    images, labels, class_names = image_arrays(
        CanonicalDataset(frame, DatasetKind.images, DIGITS_CLASSES)
    )
    assert images.shape == (20, 8, 8) and labels.tolist() == frame["label"].to_list()
    assert class_names == [str(digit) for digit in range(10)]


def test_an_unlabeled_dataset_is_one_class_named_image() -> None:
    frame = digits_frame().head(5).with_columns(pl.lit(None, dtype=pl.Int64).alias("label"))
    _, labels, class_names = image_arrays(CanonicalDataset(frame, DatasetKind.images, []))
    assert labels.tolist() == [0] * 5
    assert class_names == ["image"]
