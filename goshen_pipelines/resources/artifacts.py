"""The artifact store as a Dagster resource."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from goshen.config import load_settings
from goshen.storage import ArtifactStore, make_store


class ArtifactStorage(dg.ConfigurableResource["ArtifactStorage"]):
    """The artifact store (local folder or S3 bucket) that holds datasets, checkpoints and exports.

    It is the store the API serves downloads from: GOSHEN_STORAGE_* and GOSHEN_S3_* settings, read
    when a run starts.
    """

    _store: ArtifactStore | None = PrivateAttr(default=None)

    @property
    def store(self) -> ArtifactStore:
        if self._store is None:
            self._store = make_store(load_settings())
        return self._store
