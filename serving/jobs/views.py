"""Jobs as callers see them: stored output keys become signed links, storage fields stay out."""

from __future__ import annotations

from typing import Any

from goshen.db.models import Job, utcnow
from goshen.storage import ArtifactStore
from serving.schemas import JobMetrics, JobOutput, JobPublic, JobUrls, OutputImage


def render_output(output: dict[str, Any] | None, store: ArtifactStore) -> JobOutput | None:
    """A stored output ({"images": [{"key", ...}]}) with a fresh signed link per image."""
    if output is None:
        return None
    images = [
        OutputImage(
            url=store.signed_url(image["key"]),
            content_type=image["content_type"],
            width=image["width"],
            height=image["height"],
        )
        for image in output["images"]
    ]
    return JobOutput(images=images)


def job_urls(api_url: str, job_id: str) -> JobUrls:
    base = f"{api_url}/v1/jobs/{job_id}"
    return JobUrls(get=base, cancel=f"{base}/cancel", stream=f"{base}/events")


def render_job(job: Job, model_name: str, store: ArtifactStore, api_url: str) -> JobPublic:
    return JobPublic(
        id=job.id,
        model=model_name,
        version=job.model_version,
        status=job.status,
        input=job.input,
        output=render_output(job.output, store),
        error=job.error,
        logs=job.logs,
        progress=job.progress,
        attempts=job.attempt,
        cancel_requested=job.cancel_requested,
        webhook=job.webhook,
        webhook_events_filter=list(job.webhook_events),
        cost_micros=job.cost_micros,
        request_id=job.request_id,
        metrics=JobMetrics(
            queue_seconds=job.queue_seconds,
            run_seconds=job.run_seconds,
            device=job.device,
            peak_memory_bytes=job.peak_memory_bytes,
        ),
        urls=job_urls(api_url, job.id),
        created_at=job.created_at,
        started_at=job.started_at,
        completed_at=job.completed_at,
    )


def render_event_data(kind: str, data: dict[str, Any], store: ArtifactStore) -> dict[str, Any]:
    """An event as streamed: output events carry signed links, not storage keys."""
    if kind == "output":
        rendered = render_output(data, store)
        assert rendered is not None
        return rendered.model_dump()
    return data


def webhook_payload(
    job: Job, model_name: str, event: str, store: ArtifactStore, api_url: str
) -> dict[str, Any]:
    """Standard Webhooks' envelope: a type, a timestamp and the job as GET /v1/jobs/{id} has it."""
    return {
        "type": f"job.{event}",
        "timestamp": utcnow().isoformat(),
        "data": render_job(job, model_name, store, api_url).model_dump(mode="json"),
    }
