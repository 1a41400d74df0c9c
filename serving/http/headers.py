"""Request headers that several routes read, with the schema the OpenAPI document publishes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header
from pydantic import WithJsonSchema

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
