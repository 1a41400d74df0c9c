"""The local folder store: uploads read in bounded chunks, symlinks out of its root refused, emptied
folders removed."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from goshen.errors import InvalidInputError
from goshen.storage.local import LocalArtifactStore
from goshen.storage.store import CHUNK_SIZE
from tests.goshen.storage.harness import OPERATIONS

# --- local folder specifics ----------------------------------------------------------------------


class _RecordingReader(io.RawIOBase):
    """A large readable stream that records how much each read asked for."""

    def __init__(self, size: int) -> None:
        self._left = size
        self.requests: list[int] = []

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.requests.append(size)
        count = self._left if size < 0 else min(size, self._left)
        self._left -= count
        return b"z" * count


def test_local_put_reads_file_objects_in_bounded_chunks(local_store: LocalArtifactStore) -> None:
    reader = _RecordingReader(5 * CHUNK_SIZE)
    local_store.put("big.bin", reader)  # type: ignore[arg-type]  # a fake reader
    assert local_store.size("big.bin") == 5 * CHUNK_SIZE
    assert all(0 < size <= CHUNK_SIZE for size in reader.requests)


def test_local_store_refuses_symlinks_that_leave_the_root(
    local_store: LocalArtifactStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    local_store.root.mkdir(parents=True)
    (local_store.root / "link.txt").symlink_to(outside / "secret.txt")
    (local_store.root / "linked").symlink_to(outside, target_is_directory=True)
    for operation in OPERATIONS.values():
        for key in ["link.txt", "linked/secret.txt", "linked/new.txt"]:
            with pytest.raises(InvalidInputError, match="resolves outside the store"):
                operation(local_store, key)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"
    assert local_store.list() == []


def test_local_delete_prefix_removes_the_emptied_folders(local_store: LocalArtifactStore) -> None:
    local_store.put("datasets/ds_1/images/0.png", b"0")
    local_store.put("datasets/ds_1/labels.csv", b"l")
    local_store.put("datasets/ds_2/labels.csv", b"l")
    local_store.delete_prefix("datasets/ds_1")
    assert sorted(p.name for p in (local_store.root / "datasets").iterdir()) == ["ds_2"]
