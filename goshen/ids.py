"""Object ids: a type prefix and a time-ordered random part (`job_01JD...`), like ULIDs.

Ids sort by creation time, so cursor pagination can order by id alone.
"""

from __future__ import annotations

import secrets
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_CLASS = "[0-9A-HJKMNP-TV-Z]"  # the same alphabet, as a regex class


def new_id(kind: str) -> str:
    """A new id for an object of `kind`: 48 bits of milliseconds, then 80 random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return f"{kind}_{''.join(reversed(chars))}"


def id_pattern(kind: str = "[a-z]{2,4}") -> str:
    """The regex a well-formed id of `kind` matches (of any kind by default)."""
    return rf"^{kind}_{_CROCKFORD_CLASS}{{26}}$"
