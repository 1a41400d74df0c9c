"""Upload progress for the SDK: a file whose reads say how many of its bytes have been read.

httpx reads a multipart file field in chunks, with the same synchronous `read` under
httpx.Client and httpx.AsyncClient, so one wrapper serves both. Imports only the standard library.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO

# (bytes sent so far, bytes in all)
OnProgress = Callable[[int, int], None]


class ProgressFile:
    """`file`, read as it would be, calling `on_progress(sent, total)` after each read; a seek
    (httpx seeks to 0 before it sends the body, again on a retry) counts from the new position."""

    def __init__(self, file: BinaryIO, on_progress: OnProgress) -> None:
        self._file = file
        self._on_progress = on_progress
        self.total = os.fstat(file.fileno()).st_size
        self._sent = file.tell()

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        if chunk:
            self._sent += len(chunk)
            self._on_progress(self._sent, self.total)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._sent = self._file.seek(offset, whence)
        return self._sent

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        """The file's descriptor: httpx learns the body's length from it (Content-Length)."""
        return self._file.fileno()
