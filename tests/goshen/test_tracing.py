"""goshen.tracing: off by default, a clear error when an exporter is set without OpenTelemetry,
and spans in several places (processes) joined into one trace by a stored traceparent; spans
are read back from the SDK's in-memory exporter."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from goshen import tracing
from goshen.config import SettingsError, TracesExporter


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)


def test_off_by_default_nothing_is_made() -> None:
    tracing.configure_tracing(TracesExporter.none, "goshen-test")
    assert not tracing.enabled()
    with tracing.span("goshen.submit") as made:
        assert made is None and tracing.current_traceparent() is None
    with tracing.spans("goshen.run", [(None, {"goshen.job_id": "job_1"})]):
        tracing.annotate({"goshen.delivered": True}, error="ignored")
    tracing.record("goshen.claim", 0, 1, [(None, {})])


@pytest.mark.parametrize(
    ("exporter", "missing"),
    [
        (TracesExporter.otlp, "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
        (TracesExporter.console, "opentelemetry.sdk.trace"),
    ],
)
def test_an_exporter_without_opentelemetry_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, exporter: TracesExporter, missing: str
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # what `import` finds when it is absent
    with pytest.raises(SettingsError) as refused:
        tracing.configure_tracing(exporter, "goshen-test")
    message = str(refused.value)
    assert f"GOSHEN_TRACES_EXPORTER={exporter.value}" in message
    assert "pip install 'goshen[otel]'" in message and "GOSHEN_TRACES_EXPORTER=none" in message
    assert not tracing.enabled()


def test_the_console_exporter_turns_tracing_on() -> None:
    try:
        tracing.configure_tracing(TracesExporter.console, "goshen-test")
        assert tracing.enabled()
    finally:
        tracing.use_provider(None)


def test_a_stored_traceparent_joins_claim_run_and_deliver_to_the_submit(
    exported: InMemorySpanExporter,
) -> None:
    with tracing.span("goshen.submit", {"goshen.model": "digits"}):
        tracing.annotate({"goshen.job_id": "job_1"})
        stored = tracing.current_traceparent()
    assert stored is not None and stored.startswith("00-")
    # Later, elsewhere: only the stored traceparent connects them.
    started = time.time_ns()
    tracing.record("goshen.claim", started, started + 1000, [(stored, {"goshen.job_id": "job_1"})])
    with tracing.spans("goshen.run", [(stored, {"goshen.job_id": "job_1"}), (None, {})]):
        pass
    with tracing.span("goshen.deliver", parent=stored):
        tracing.annotate({"http.response.status_code": 204})

    finished = exported.get_finished_spans()
    by_name = {span.name: span for span in finished if span.attributes}
    submit = by_name["goshen.submit"]
    assert submit.parent is None and submit.attributes == {
        "goshen.model": "digits",
        "goshen.job_id": "job_1",
    }
    for name in ("goshen.claim", "goshen.run", "goshen.deliver"):
        span = by_name[name]
        assert span.context.trace_id == submit.context.trace_id, name
        assert span.parent is not None and span.parent.span_id == submit.context.span_id, name
    claim = by_name["goshen.claim"]
    assert (claim.start_time, claim.end_time) == (started, started + 1000)
    assert by_name["goshen.deliver"].attributes == {"http.response.status_code": 204}
    # A job stored without a traceparent runs in a trace of its own, not inside another span.
    (alone,) = [span for span in finished if span.name == "goshen.run" and not span.attributes]
    assert alone.parent is None and alone.context.trace_id != submit.context.trace_id


def test_a_failure_marks_every_span_of_a_batch_failed(exported: InMemorySpanExporter) -> None:
    with (
        pytest.raises(RuntimeError),
        tracing.spans("goshen.run", [(None, {"goshen.job_id": "a"}), (None, {})]),
    ):
        raise RuntimeError("out of memory")
    runs = exported.get_finished_spans()
    assert len(runs) == 2
    for span in runs:
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "RuntimeError: out of memory"
        assert span.events[0].name == "exception"


def test_a_malformed_traceparent_starts_a_trace_of_its_own(
    exported: InMemorySpanExporter,
) -> None:
    with tracing.span("goshen.deliver", parent="00-not-a-trace-01"):
        pass
    with tracing.span("goshen.outer"), tracing.span("goshen.deliver", parent="garbage"):
        pass
    delivered = [span for span in exported.get_finished_spans() if span.name == "goshen.deliver"]
    assert [span.parent for span in delivered] == [None, None]


def test_a_failed_delivery_is_marked_with_its_error(exported: InMemorySpanExporter) -> None:
    with tracing.span("goshen.deliver"):
        tracing.annotate({"goshen.delivered": False}, error="HTTP 500: nope")
    (span,) = exported.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "HTTP 500: nope"
