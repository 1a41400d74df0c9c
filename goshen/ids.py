"""Object ids: a type prefix and a time-ordered random part (`job_01JD...`), like ULIDs.

Ids sort by creation time, so cursor pagination can order by id alone.
"""

from __future__ import annotations

import secrets
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(kind: str) -> str:
    """A new id for an object of `kind`: 48 bits of milliseconds, then 80 random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return f"{kind}_{''.join(reversed(chars))}"
