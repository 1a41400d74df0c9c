"""What ties a worker's work on a job to the request that submitted it: a log line per claimed
job and the log context of the batch it runs in (goshen.logs: `job_id` and `request_id`, or
`job_ids` and `request_ids` for a batch of several), and the `goshen.claim` and `goshen.run`
spans, each in its job's trace (goshen.tracing: the traceparent stored at submission)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from goshen import logs, tracing
from serving.jobs.claim import Claim

log = logging.getLogger(__name__)


def claimed(claims: Sequence[Claim], worker_id: str, started_ns: int) -> None:
    """Log each claimed job in its request's context, and record its claim (from `started_ns`,
    time.time_ns() before the claim began) in its trace."""
    if log.isEnabledFor(logging.INFO):
        for claim in claims:
            with logs.log_context(job_id=claim.job_id, request_id=claim.request_id):
                log.info("claimed job %s (attempt %d)", claim.job_id, claim.attempt)
    if tracing.enabled():
        tracing.record("goshen.claim", started_ns, time.time_ns(), _spans(claims, worker_id))


@contextmanager
def running(claims: Sequence[Claim], worker_id: str) -> Iterator[None]:
    """The batch's log context and a `goshen.run` span per job, for the block that runs it."""
    context = logs.jobs_context([(claim.job_id, claim.request_id) for claim in claims])
    spans = _spans(claims, worker_id) if tracing.enabled() else []
    with logs.log_context(**context), tracing.spans("goshen.run", spans):
        yield


def _spans(claims: Sequence[Claim], worker_id: str) -> list[tuple[str | None, tracing.Attributes]]:
    return [
        (
            claim.traceparent,
            {
                "goshen.job_id": claim.job_id,
                "goshen.attempt": claim.attempt,
                "goshen.model_id": claim.model_id,
                "goshen.worker_id": worker_id,
                "goshen.batch_size": len(claims),
            },
        )
        for claim in claims
    ]
