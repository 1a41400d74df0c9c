"""Webhook bodies keep storage keys, not links: each attempt signs fresh image links.

A signed link expires after GOSHEN_SIGNED_URL_TTL_SECONDS (1 h by default) while retries go on
for hours, so the outbox stores the job's output as the job row has it (storage keys) and every
attempt renders it into links signed at that moment. Everything else in the body — `type`,
`timestamp`, the job's fields — is stored once and sent unchanged, under the same `webhook-id`.
"""

from __future__ import annotations

from typing import Any

from goshen.storage import ArtifactStore
from serving.jobs.views import render_output


def storable(payload: dict[str, Any], output: dict[str, Any] | None) -> dict[str, Any]:
    """`payload` (as GET /v1/jobs/{id} renders the job) with `data.output` put back to the
    job's stored `output`, whose images carry storage keys; what the outbox keeps."""
    data = payload.get("data")
    if output is None or not isinstance(data, dict) or data.get("output") is None:
        return payload
    return {**payload, "data": {**data, "output": output}}


def render_payload(payload: dict[str, Any], store: ArtifactStore) -> dict[str, Any]:
    """The body of one attempt: stored image keys become links signed now.

    Rows queued before keys were stored already carry links; they are sent as they are.
    """
    data = payload.get("data")
    output = data.get("output") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not _has_keys(output):
        return payload
    rendered = render_output(output, store)
    assert rendered is not None
    return {**payload, "data": {**data, "output": rendered.model_dump(mode="json")}}


def _has_keys(output: Any) -> bool:
    images = output.get("images") if isinstance(output, dict) else None
    return (
        isinstance(images, list)
        and bool(images)
        and all(isinstance(image, dict) and "key" in image for image in images)
    )
