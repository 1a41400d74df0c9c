"""Request headers that several routes read, with the schema the OpenAPI document publishes."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Header
from pydantic import WithJsonSchema

from goshen.errors import InvalidInputError

# An Idempotency-Key: printable ASCII, as the IETF draft's examples and Stripe's keys are.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"

# Event ids are positive 64-bit integers in the database.
MAX_EVENT_ID = 2**63 - 1

# A header is a string or absent: the document says "an integer", not "an integer or null".
LastEventId = Annotated[
    int | None,
    Header(
        ge=0,
        le=MAX_EVENT_ID,
        description="resume after this event id (the `id:` of the last event received)",
    ),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_EVENT_ID}),
]

# Prefer (RFC 7240): `wait` or `wait=N` holds an answer until the job ends or N seconds pass.
PreferHeader = Annotated[
    str | None,
    Header(
        max_length=200,
        description="`wait` or `wait=N` (N from 1 to 60): answer once the job ends or N seconds "
        "pass",
    ),
]
MAX_WAIT_SECONDS = 60
_PREFER_WAIT = re.compile(r"^\s*wait(?:\s*=\s*(\d+))?\s*$", re.IGNORECASE)


def wait_seconds(prefer: str | None) -> int | None:
    """The `wait` preference of a Prefer header (RFC 7240), in seconds; None when absent."""
    if prefer is None:
        return None
    for preference in prefer.split(","):
        if not preference.strip().lower().startswith("wait"):
            continue  # other preferences are not ours to refuse
        match = _PREFER_WAIT.match(preference)
        seconds = int(match.group(1)) if match and match.group(1) else MAX_WAIT_SECONDS
        if match is None or not 1 <= seconds <= MAX_WAIT_SECONDS:
            raise InvalidInputError(
                f"Prefer: {preference.strip()} is not understood; send `Prefer: wait` or "
                f"`Prefer: wait=N` with N from 1 to {MAX_WAIT_SECONDS}",
                field="Prefer",
            )
        return seconds
    return None
