"""CoalescedWrites on a real event loop, over a transport that records what reaches it (a
stand-in for the socket's transport: what matters is how many writes it gets and in what
order). The server tests (tests/serving/test_server.py) serve real sockets through it."""

from __future__ import annotations

import asyncio
from typing import Any

from serving.http.coalesced_writes import FLUSH_AT_BYTES, CoalescedWrites


class Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[Any] = []
        self.closing = False

    def write(self, data: Any) -> None:
        if self.closing:  # as uvloop's, once the connection is lost
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")
        self.events.append(bytes(data))

    def close(self) -> None:
        self.events.append("close")
        self.closing = True

    def abort(self) -> None:
        self.events.append("abort")

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0


def _run(body: Any) -> Recording:
    """Run `body` on a new loop; no callback of the loop may fail (a failed flush would)."""
    recording = Recording()
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: errors.append(context))
        await body(CoalescedWrites(recording, loop), recording)
        await asyncio.sleep(0)

    asyncio.run(main())
    assert errors == []
    return recording


def test_what_one_turn_writes_goes_out_as_one_write_when_the_turn_ends() -> None:
    async def body(writes: CoalescedWrites, recording: Recording) -> None:
        writes.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        writes.write(b"{}")
        assert recording.events == []  # held until the turn ends
        assert writes.get_write_buffer_size() == 40
        await asyncio.sleep(0)
        assert recording.events == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        writes.write(b"next")  # a later turn: a write of its own
        await asyncio.sleep(0)

    assert _run(body).events[-1] == b"next"


def test_a_large_write_goes_out_at_once_so_flow_control_sees_it() -> None:
    async def body(writes: CoalescedWrites, recording: Recording) -> None:
        writes.write(b"head")
        writes.write(b"x" * FLUSH_AT_BYTES)
        assert recording.events == [b"head" + b"x" * FLUSH_AT_BYTES]
        writes.write(b"tail")
        await asyncio.sleep(0)

    assert _run(body).events[-1] == b"tail"


def test_close_writes_what_is_held_first_and_abort_drops_it() -> None:
    async def body(writes: CoalescedWrites, recording: Recording) -> None:
        writes.write(b"answer")
        writes.close()
        assert recording.events == [b"answer", "close"]

    _run(body)

    async def aborted(writes: CoalescedWrites, recording: Recording) -> None:
        writes.write(b"answer")
        writes.abort()
        await asyncio.sleep(0)
        assert recording.events == ["abort"]

    _run(aborted)


def test_what_is_held_when_the_client_goes_away_is_dropped_without_an_error() -> None:
    async def body(writes: CoalescedWrites, recording: Recording) -> None:
        writes.write(b"answer")
        recording.closing = True  # the connection was lost before the turn ended
        await asyncio.sleep(0)
        assert recording.events == []

    _run(body)
