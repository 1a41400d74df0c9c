"""Artifact storage: one interface over a local folder and any S3-compatible bucket.

Keys are made by the server (see `artifact_key`) and are checked again by every operation, so a
key can never reach outside the store's folder or bucket prefix. A prefix given to `list` or
`delete_prefix` names a folder: "a/b" covers "a/b/..." but never "a/bc" or the object "a/b".
"""

from goshen.storage.configured import make_store
from goshen.storage.keys import artifact_key
from goshen.storage.signing import verify_signed_url
from goshen.storage.store import ArtifactStore, ObjectInfo

__all__ = ["ArtifactStore", "ObjectInfo", "artifact_key", "make_store", "verify_signed_url"]
