"""Artifact store conformance, on a folder and on S3: reading and writing objects, listing and
deleting by folder."""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from goshen.errors import InvalidInputError, NotFoundError
from goshen.storage import ArtifactStore, ObjectInfo, s3
from goshen.storage.store import CHUNK_SIZE
from tests.goshen.storage.harness import PREFIX, Harness, keys_of

# --- reading and writing -------------------------------------------------------------------------


def test_put_then_get_returns_the_bytes_and_describes_the_object(store: ArtifactStore) -> None:
    before = datetime.now(UTC)
    info = store.put("runs/run_1/metrics.json", b'{"loss": 0.25}')
    assert (info.key, info.size, info.content_type) == (
        "runs/run_1/metrics.json",
        14,
        "application/json",
    )
    assert info.last_modified.utcoffset() == timedelta(0)
    assert abs(info.last_modified - before) < timedelta(minutes=1)
    assert store.get("runs/run_1/metrics.json") == b'{"loss": 0.25}'


def test_put_keeps_an_explicit_content_type(store: ArtifactStore) -> None:
    info = store.put("m/model.onnx", b"x", content_type="application/onnx")
    assert info.content_type == "application/onnx"


def test_put_replaces_an_existing_object(store: ArtifactStore) -> None:
    store.put("a.txt", b"first version")
    store.put("a.txt", b"second")
    assert store.get("a.txt") == b"second"
    assert store.size("a.txt") == 6


def test_large_file_object_is_stored_and_streamed_back_in_chunks(store: ArtifactStore) -> None:
    data = random.Random(7).randbytes(3 * CHUNK_SIZE + 123)
    info = store.put("datasets/ds_1/images.zip", io.BytesIO(data))
    chunks = list(store.stream("datasets/ds_1/images.zip"))
    assert info.size == store.size("datasets/ds_1/images.zip") == len(data)
    assert [len(chunk) for chunk in chunks] == [CHUNK_SIZE] * 3 + [123]
    assert b"".join(chunks) == data


def test_stream_uses_the_requested_chunk_size(store: ArtifactStore) -> None:
    store.put("k", b"0123456789")
    assert list(store.stream("k", chunk_size=4)) == [b"0123", b"4567", b"89"]


def test_empty_object_roundtrips(store: ArtifactStore) -> None:
    store.put("empty", b"")
    assert (store.get("empty"), list(store.stream("empty")), store.size("empty")) == (b"", [], 0)


@pytest.mark.parametrize("operation", ["get", "stream", "size"])
def test_missing_key_is_not_found_and_named(store: ArtifactStore, operation: str) -> None:
    store.put("models/other.onnx", b"x")
    # stream must fail when called, before iteration, so a route can answer 404 cleanly.
    with pytest.raises(NotFoundError, match=r"models/missing\.onnx"):
        getattr(store, operation)("models/missing.onnx")


def test_a_folder_is_not_an_object(store: ArtifactStore) -> None:
    store.put("a/b/c.txt", b"x")
    assert not store.exists("a/b")
    with pytest.raises(NotFoundError):
        store.get("a/b")
    with pytest.raises(NotFoundError):
        store.size("a/b")


def test_exists_follows_put_and_delete(store: ArtifactStore) -> None:
    assert not store.exists("x/y.bin")
    store.put("x/y.bin", b"1")
    assert store.exists("x/y.bin")
    store.delete("x/y.bin")
    assert not store.exists("x/y.bin")


def test_delete_is_idempotent(store: ArtifactStore) -> None:
    store.put("keep.txt", b"k")
    store.put("gone.txt", b"g")
    store.delete("gone.txt")
    store.delete("gone.txt")
    store.delete("never/was.txt")
    assert [info.key for info in store.list()] == ["keep.txt"]


class _FailingReader(io.RawIOBase):
    """A file object that breaks after its first chunk, like a dropped upload."""

    def __init__(self) -> None:
        self._reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._reads += 1
        if self._reads > 1:
            raise OSError("client went away")
        buffer[:5] = b"parti"
        return 5


def test_failed_put_leaves_the_previous_object_and_no_debris(harness: Harness) -> None:
    harness.store.put("report.csv", b"old,complete")
    with pytest.raises(OSError, match="client went away"):
        harness.store.put("report.csv", _FailingReader())
    assert harness.store.get("report.csv") == b"old,complete"
    assert harness.raw_keys() == [f"{PREFIX}/report.csv"]


class _ObservingReader(io.RawIOBase):
    """A file object that looks at the store while its own upload is still being read."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store
        self.seen: tuple[list[ObjectInfo], bool] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.seen is not None:
            return 0
        self.seen = (self._store.list(), self._store.exists("d/upload.bin"))
        buffer[:4] = b"data"
        return 4


def test_an_upload_is_invisible_until_it_completes(store: ArtifactStore) -> None:
    reader = _ObservingReader(store)
    store.put("d/upload.bin", reader)  # type: ignore[arg-type]  # a fake reader
    assert reader.seen == ([], False)
    assert keys_of(store.list()) == ["d/upload.bin"]


# --- listing and deleting by folder --------------------------------------------------------------

LISTED = ["a/b.txt", "a/b/1", "a/b/c/2", "a/bc/3", "z"]


def test_list_is_recursive_sorted_and_complete(store: ArtifactStore) -> None:
    for index, key in enumerate(reversed(LISTED)):
        store.put(key, b"x" * index)
    infos = store.list()
    assert keys_of(infos) == LISTED
    assert [info.size for info in infos] == [4, 3, 2, 1, 0]
    assert all(info.content_type is None for info in infos)


@pytest.mark.parametrize("prefix", ["a/b", "a/b/"])
def test_list_prefix_is_a_folder(store: ArtifactStore, prefix: str) -> None:
    for key in LISTED:
        store.put(key, b"x")
    assert keys_of(store.list(prefix)) == ["a/b/1", "a/b/c/2"]


def test_list_of_an_object_or_missing_folder_is_empty(store: ArtifactStore) -> None:
    for key in LISTED:
        store.put(key, b"x")
    assert store.list("z") == []
    assert store.list("nothing/here") == []


def test_delete_prefix_removes_only_that_folder(store: ArtifactStore) -> None:
    for key in LISTED:
        store.put(key, b"x")
    assert store.delete_prefix("a/b") == 2
    assert keys_of(store.list()) == ["a/b.txt", "a/bc/3", "z"]
    assert store.delete_prefix("a/b") == 0


def test_delete_prefix_refuses_to_empty_the_store(store: ArtifactStore) -> None:
    store.put("z", b"x")
    for prefix in ["", "/"]:
        with pytest.raises(InvalidInputError, match="never empties the store"):
            store.delete_prefix(prefix)
    assert store.exists("z")


def test_delete_prefix_deletes_in_batches(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3, "_S3_DELETE_BATCH", 2)  # S3's real batch is 1000 keys
    for index in range(5):
        store.put(f"ds/{index}", b"")
    assert store.delete_prefix("ds") == 5
    assert store.list() == []
