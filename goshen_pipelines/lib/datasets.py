"""Uploaded datasets to canonical Parquet, and the dataset row that tracks it."""

from __future__ import annotations

from functools import partial
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from goshen.db.models import Dataset, DatasetStatus
from goshen.errors import GoshenError, NotFoundError
from goshen.storage import ArtifactStore
from goshen_pipelines.lib import ingest

DIGITS_KEY = "datasets/builtin/digits/" + ingest.CANONICAL
# Uploaded images are kept at the largest training size; trainers resize down from it.
CANONICAL_IMAGE_SIZE = 64


def canonical_key(dataset: Dataset) -> str:
    return f"{dataset.storage_prefix}/{ingest.CANONICAL}"


def ingest_uploaded(session: Session, store: ArtifactStore, dataset_id: str) -> ingest.IngestResult:
    """Write the dataset's canonical Parquet and mark it ready, or failed with the reason, in
    `session` (the uploaded_dataset asset does the same steps, committing each)."""
    dataset = start_ingest(session, dataset_id)
    try:
        result = ingest.ingest_dataset(
            store,
            dataset.storage_prefix,
            canonical_key(dataset),
            image_size=CANONICAL_IMAGE_SIZE,
            report=partial(save_progress, session, dataset_id),
        )
    except (GoshenError, ValueError) as exc:
        fail_ingest(session, dataset_id, str(exc))
        raise
    finish_ingest(session, dataset_id, result)
    return result


def start_ingest(session: Session, dataset_id: str) -> Dataset:
    """Mark the dataset validating, its progress cleared; the row, for where it is stored."""
    dataset = _get(session, dataset_id)
    dataset.status, dataset.error, dataset.progress = DatasetStatus.validating, None, None
    session.flush()
    return dataset


def save_progress(session: Session, dataset_id: str, progress: dict[str, Any]) -> None:
    """Record how far ingestion is (lib/progress.py's report) on the dataset's row."""
    session.execute(update(Dataset).where(Dataset.id == dataset_id).values(progress=progress))


def finish_ingest(session: Session, dataset_id: str, result: ingest.IngestResult) -> None:
    """Mark the dataset ready, with the classes its canonical Parquet holds."""
    dataset = _get(session, dataset_id)
    dataset.status = DatasetStatus.ready
    dataset.stats = {
        **(dataset.stats or {}),
        "classes": result.classes,
        "class_counts": result.class_counts,
    }


def fail_ingest(session: Session, dataset_id: str, error: str) -> None:
    """Mark the dataset failed, saying why; its progress stays where ingestion stopped."""
    dataset = _get(session, dataset_id)
    dataset.status, dataset.error = DatasetStatus.failed, error


def _get(session: Session, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFoundError(f"no dataset with id {dataset_id}")
    return dataset


def load_canonical(
    session: Session, store: ArtifactStore, dataset_id: str
) -> ingest.CanonicalDataset:
    """The dataset's canonical form, ingesting it first if no run has yet."""
    dataset = _get(session, dataset_id)
    if dataset.status != DatasetStatus.ready or not store.exists(canonical_key(dataset)):
        ingest_uploaded(session, store, dataset_id)
    return ingest.read_canonical(store, canonical_key(dataset))
