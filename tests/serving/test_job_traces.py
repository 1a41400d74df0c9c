"""A job's trace: `goshen.submit` in the API, `goshen.claim` and `goshen.run` in a worker,
`goshen.deliver` in the webhook dispatcher, one trace joined by the traceparent stored with the
job. The API (a real uvicorn), a worker and the dispatcher run in threads of this process, so the
SDK's in-memory exporter sees every span; across processes only the stored traceparent joins
them, as it does here (tests/goshen/test_tracing.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from http.server import ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.orm import Session, sessionmaker

from goshen import tracing
from goshen.config import Settings
from goshen.db.models import Job, Model
from serving.webhooks.delivery import run_dispatcher
from tests.fixtures.accounts import Account
from tests.serving.webhooks.receivers import Receiver, ReceiverHandler


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ReceiverHandler)
    receiver = Receiver(server)
    server.receiver = receiver  # type: ignore[attr-defined]  # read by its handler
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield receiver
    server.shutdown()
    server.server_close()


def _named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def test_submit_claim_run_and_deliver_are_one_trace(
    exported: InMemorySpanExporter,
    serving_settings: Settings,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
    start_worker: Callable[..., threading.Event],
    receiver: Receiver,
    developer: Account,
    digits_model: Model,
    sessions: sessionmaker[Session],
) -> None:
    stop = threading.Event()
    with run_api(serving_settings) as served:
        dispatcher = threading.Thread(target=run_dispatcher, args=(served, stop), daemon=True)
        dispatcher.start()
        start_worker()
        try:
            created = httpx.post(
                f"{served.api_url}/v1/generate",
                json={
                    "model": digits_model.name,
                    "input": {"digit": 5, "num_inference_steps": 2},
                    "webhook": receiver.url,
                    "webhook_events_filter": ["completed"],
                },
                headers=developer.headers,
                timeout=30,
            )
            assert created.status_code == 201, created.text
            deadline = time.monotonic() + 120
            while not receiver.received:
                assert time.monotonic() < deadline, "the completed event never arrived"
                time.sleep(0.1)
        finally:
            stop.set()
            dispatcher.join(timeout=30)
    job_id = created.json()["id"]
    with sessions() as session:
        stored = session.get_one(Job, job_id).traceparent
    assert stored is not None

    spans = exported.get_finished_spans()
    (submit,) = _named(spans, "goshen.submit")
    assert submit.attributes is not None and submit.attributes["goshen.job_id"] == job_id
    assert submit.attributes["goshen.model"] == digits_model.name
    trace_id = submit.context.trace_id
    assert stored.split("-")[1] == f"{trace_id:032x}"
    (claim,) = _named(spans, "goshen.claim")
    (run,) = _named(spans, "goshen.run")
    (deliver,) = _named(spans, "goshen.deliver")
    for span in (claim, run, deliver):
        assert span.context.trace_id == trace_id, span.name
        assert span.parent is not None and span.parent.span_id == submit.context.span_id
        assert span.attributes is not None and span.attributes["goshen.job_id"] == job_id
    assert run.attributes is not None and run.attributes["goshen.attempt"] == 1
    assert deliver.attributes is not None and deliver.attributes["goshen.delivered"] is True
    assert deliver.attributes["http.response.status_code"] == 204
