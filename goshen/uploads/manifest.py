"""A stored dataset's layout: its file names, its manifest, and what store_dataset kept."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from goshen.db.models import DatasetKind
from goshen.storage import ArtifactStore
from goshen.uploads.formats import UploadFormat

MANIFEST = "manifest.json"
IMAGES = "images.tar"
TABLE = "table.parquet"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class StoredDataset:
    """What `store_dataset` kept: the fields of the dataset's row."""

    kind: DatasetKind
    format: UploadFormat
    size_bytes: int
    file_count: int
    schema: dict[str, Any]  # {"columns": {name: dtype}}
    stats: dict[str, Any]


def put_manifest(store: ArtifactStore, prefix: str, manifest: dict[str, Any]) -> int:
    """Store the dataset's manifest.json under `prefix`; its size in bytes."""
    data = json.dumps(manifest, ensure_ascii=False).encode()
    return store.put(f"{prefix}/{MANIFEST}", data, content_type="application/json").size
