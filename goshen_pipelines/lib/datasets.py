"""Uploaded datasets to canonical Parquet, and the dataset row that tracks it."""

from __future__ import annotations

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
    """Write the dataset's canonical Parquet and mark it ready, or failed with the reason."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFoundError(f"no dataset with id {dataset_id}")
    try:
        result = ingest.ingest_dataset(
            store, dataset.storage_prefix, canonical_key(dataset), image_size=CANONICAL_IMAGE_SIZE
        )
    except (GoshenError, ValueError) as exc:
        dataset.status, dataset.error = DatasetStatus.failed, str(exc)
        raise
    dataset.status = DatasetStatus.ready
    dataset.stats = {
        **(dataset.stats or {}),
        "classes": result.classes,
        "class_counts": result.class_counts,
    }
    return result


def load_canonical(
    session: Session, store: ArtifactStore, dataset_id: str
) -> ingest.CanonicalDataset:
    """The dataset's canonical form, ingesting it first if no run has yet."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFoundError(f"no dataset with id {dataset_id}")
    if dataset.status != DatasetStatus.ready or not store.exists(canonical_key(dataset)):
        ingest_uploaded(session, store, dataset_id)
    return ingest.read_canonical(store, canonical_key(dataset))
