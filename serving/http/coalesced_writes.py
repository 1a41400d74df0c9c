"""One socket write for what a turn of the event loop writes to a connection.

uvicorn writes an answer's status line and headers, then its body, each with a call to the
transport, and uvloop sends each at once: two `send` system calls and two TCP segments for every
small answer, which the client reads in two `recv`s. `CoalescedWrites` holds what is written
during one turn of the event loop and writes it in one go when the turn ends (a `call_soon`), or
as soon as FLUSH_AT_BYTES are held, so a streamed body never waits in it and flow control sees
every large write as before. On a /predict answer it saves a system call and a segment each side
(bench/predict_vs_mlflow.py); the order of the bytes never changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

# Held writes go out at once from this size: a large body is not copied again to be joined.
FLUSH_AT_BYTES = 64 * 1024


class CoalescedWrites(asyncio.Transport):
    """`transport`, with the writes of one turn of `loop` sent as one."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.transport = transport
        self.loop = loop
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self.loop.call_soon(self.flush)
        self._held.append(bytes(data))
        self._held_bytes += len(data)
        if self._held_bytes >= FLUSH_AT_BYTES:
            self.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Write what is held now."""
        if not self._held:
            return
        held = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held, self._held_bytes = [], 0
        if self.transport.is_closing():
            return  # the client went away: uvloop refuses writes to a closed connection
        self.transport.write(held)

    def close(self) -> None:
        self.flush()  # what was written before the close goes first, as on the transport
        self.transport.close()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def abort(self) -> None:
        self._held, self._held_bytes = [], 0  # an abort drops what is buffered
        self.transport.abort()

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def is_reading(self) -> bool:
        return self.transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self.transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + self._held_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.transport.set_write_buffer_limits(high, low)
