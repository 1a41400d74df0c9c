"""What a generation job may cost at most: the hold placed when it is submitted."""

from __future__ import annotations

from goshen import catalog
from goshen.db.models import Model


def most_a_job_can_cost(model: Model, *, images: int, timeout_seconds: float) -> int:
    """The job's cost in micro-credits were it to use everything it may: every image it asks
    for (image pricing), its whole timeout (second pricing; a job past it fails, uncharged), or
    one request."""
    return catalog.price(model, images=images, seconds=timeout_seconds)[1]
