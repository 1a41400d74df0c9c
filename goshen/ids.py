"""Object ids: a type prefix and a time-ordered random part (`job_01JD...`), like ULIDs.

Ids sort by creation time, so cursor pagination can order by id alone.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_CLASS = "[0-9A-HJKMNP-TV-Z]"  # the same alphabet, as a regex class


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_MILLISECONDS = 2**48 - 1
_RANDOM_BITS = 80


def new_id(kind: str) -> str:
    """A new id for an object of `kind`: 48 bits of milliseconds, then 80 random bits."""
    return _encode(kind, time.time_ns() // 1_000_000, secrets.randbits(_RANDOM_BITS))


def smallest_id_at(kind: str, moment: datetime) -> str:
    """The smallest id of `kind` made in `moment`'s millisecond: ids below it are older."""
    return _encode(kind, _milliseconds(moment), 0)


def largest_id_at(kind: str, moment: datetime) -> str:
    """The largest id of `kind` made in `moment`'s millisecond: ids above it are newer."""
    return _encode(kind, _milliseconds(moment), 2**_RANDOM_BITS - 1)


def _milliseconds(moment: datetime) -> int:
    """`moment` (timezone-aware) in milliseconds since the epoch, within what an id can hold."""
    milliseconds = (moment - _EPOCH) // timedelta(milliseconds=1)
    return min(max(milliseconds, 0), _MAX_MILLISECONDS)


def _encode(kind: str, milliseconds: int, random_part: int) -> str:
    value = milliseconds << _RANDOM_BITS | random_part
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return f"{kind}_{''.join(reversed(chars))}"


def id_pattern(kind: str = "[a-z]{2,4}") -> str:
    """The regex a well-formed id of `kind` matches (of any kind by default)."""
    return rf"^{kind}_{_CROCKFORD_CLASS}{{26}}$"
