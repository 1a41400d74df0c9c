"""make_store: the artifact store that settings configure."""

from __future__ import annotations

from goshen.config import Settings, StorageBackend
from goshen.storage.local import LocalArtifactStore
from goshen.storage.s3 import S3ArtifactStore, make_s3_client
from goshen.storage.store import ArtifactStore


def make_store(settings: Settings) -> ArtifactStore:
    """The artifact store GOSHEN_STORAGE_BACKEND selects."""
    ttl = settings.signed_url_ttl_seconds
    if settings.storage_backend is StorageBackend.s3:
        assert settings.s3_bucket, "Settings refuses the s3 backend without GOSHEN_S3_BUCKET"
        client = make_s3_client(settings)
        return S3ArtifactStore(
            settings.s3_bucket, settings.s3_prefix, client, default_ttl_seconds=ttl
        )
    return LocalArtifactStore(
        settings.artifacts_dir, settings.signing_key, settings.api_url, default_ttl_seconds=ttl
    )
