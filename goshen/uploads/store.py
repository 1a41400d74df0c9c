"""store_dataset: an upload checked by its kind and kept under server-made names, or refused."""

from __future__ import annotations

import tempfile
from pathlib import Path

from goshen.db.models import DatasetKind
from goshen.errors import InvalidInputError, PayloadTooLargeError
from goshen.storage import ArtifactStore
from goshen.uploads.formats import UploadFormat, detect_format
from goshen.uploads.images import store_images
from goshen.uploads.limits import UploadLimits
from goshen.uploads.manifest import StoredDataset
from goshen.uploads.tables import store_table


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
                return store_images(path, fmt, store, prefix, limits, Path(workdir))
            return store_table(path, fmt, store, prefix, limits, Path(workdir), target)
    except BaseException:
        store.delete_prefix(prefix)
        raise


def _described(fmt: UploadFormat) -> str:
    names = {UploadFormat.parquet: "a Parquet table", UploadFormat.csv: "a CSV table"}
    return names.get(fmt, f"a {fmt.value} archive of images")
