"""Canonical datasets as the arrays the trainers take."""

from __future__ import annotations

import numpy as np
import polars as pl

from goshen.errors import InvalidInputError
from goshen_pipelines.lib.ingest import CanonicalDataset


def image_arrays(dataset: CanonicalDataset) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (N, H, W) in [0, 1], class indices (N,) and the class names by index.

    An unlabeled image dataset trains as a single class, named "image".
    """
    frame = dataset.frame
    if frame.height == 0:
        raise InvalidInputError("the dataset has no images to train on", field="dataset_id")
    size = int(frame["height"][0])
    images = np.asarray(frame["pixels"].to_list(), dtype=np.float32).reshape(-1, size, size)
    labels = frame["label"].fill_null(0).to_numpy().astype(np.int64)
    return images, labels, list(dataset.classes) or ["image"]


def table_arrays(
    dataset: CanonicalDataset, target: str
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Numeric feature columns (N, F) as float32, the target column (N,), and each feature
    column's name and the dtype a served model takes it in (int64 for integers, else float32
    or float64), in the matrix's order; nulls dropped."""
    frame = dataset.frame.drop_nulls()
    if target not in frame.columns:
        raise InvalidInputError(f"the dataset has no column {target!r}", field="config.target")
    features = frame.drop(target)
    non_numeric = [name for name, dtype in features.schema.items() if not dtype.is_numeric()]
    if non_numeric:
        raise InvalidInputError(
            f"feature columns must be numeric; encode or drop {non_numeric}", field="dataset_id"
        )
    if features.width == 0 or frame.height < 2:
        raise InvalidInputError("the table needs feature columns and rows", field="dataset_id")
    columns = [
        (name, "int64" if dtype.is_integer() else "float32" if dtype == pl.Float32 else "float64")
        for name, dtype in features.schema.items()
    ]
    return features.cast(pl.Float32).to_numpy(), frame[target].to_numpy(), columns
