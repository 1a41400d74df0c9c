"""OpenTelemetry traces of a job's way through the platform: `goshen.submit` (the API), then
`goshen.claim` and `goshen.run` (the worker), then `goshen.deliver` (the webhook dispatcher), one
trace joined across processes by the W3C `traceparent` stored with the job.

Off by default (GOSHEN_TRACES_EXPORTER=none): no SDK is imported and every call here returns at
once. `otlp` sends spans where the standard OTEL_EXPORTER_OTLP_* variables say (by default
http://localhost:4318), `console` prints them; both need `pip install 'goshen[otel]'`. The
tracer provider is this module's own, not OpenTelemetry's global one, which other libraries
(MLflow's tracing) may claim.
"""

from __future__ import annotations

import atexit
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from goshen.config import SettingsError, TracesExporter

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

Attributes = Mapping[str, str | int | float | bool]
INSTALL_HINT = "pip install 'goshen[otel]'"
_tracer: Tracer | None = None


def configure_tracing(exporter: TracesExporter, service: str) -> None:
    """Export this process's spans as GOSHEN_TRACES_EXPORTER says, as `service` (service.name);
    SettingsError, saying what to install, when an exporter is set and OpenTelemetry is not."""
    if exporter is TracesExporter.none:
        use_provider(None)
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        if exporter is TracesExporter.otlp:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise SettingsError(
            f"GOSHEN_TRACES_EXPORTER={exporter} needs OpenTelemetry's SDK and OTLP exporter, "
            f"which are not installed ({exc.name} is missing): {INSTALL_HINT}, or set "
            "GOSHEN_TRACES_EXPORTER=none"
        ) from None
    spans = OTLPSpanExporter() if exporter is TracesExporter.otlp else ConsoleSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(spans))
    atexit.register(provider.shutdown)  # exports what is still batched when the process ends
    use_provider(provider)


def use_provider(provider: TracerProvider | None) -> None:
    """Make spans with `provider` from now on (tests: one with an in-memory exporter); None:
    none."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer("goshen")


def enabled() -> bool:
    return _tracer is not None


@contextmanager
def span(
    name: str, attributes: Attributes | None = None, *, parent: str | None = None
) -> Iterator[Span | None]:
    """A span for the block, current within it, a child of `parent` (a traceparent) or else of
    the current span; None when tracing is off. An exception marks it failed."""
    if _tracer is None:
        yield None
        return
    with _tracer.start_as_current_span(
        name, context=_context(parent), attributes=attributes
    ) as current:
        yield current


@contextmanager
def spans(name: str, parents: Sequence[tuple[str | None, Attributes]]) -> Iterator[None]:
    """One span per (traceparent, attributes), all open for the block (a batch of jobs, each
    in its own trace; no traceparent: a trace of its own); none when tracing is off. An
    exception marks them all failed."""
    if _tracer is None:
        yield
        return
    made = [
        _tracer.start_span(name, context=_context(parent, root=True), attributes=attributes)
        for parent, attributes in parents
    ]
    try:
        yield
    except BaseException as exc:
        from opentelemetry.trace import Status, StatusCode

        for one in made:
            one.record_exception(exc)
            one.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        for one in made:
            one.end()


def record(
    name: str, start_ns: int, end_ns: int, parents: Sequence[tuple[str | None, Attributes]]
) -> None:
    """One span per (traceparent, attributes) from `start_ns` to `end_ns` (time.time_ns()):
    something measured before it was known which traces it belongs to (a claim)."""
    if _tracer is None:
        return
    for parent, attributes in parents:
        made = _tracer.start_span(
            name, context=_context(parent, root=True), attributes=attributes, start_time=start_ns
        )
        made.end(end_time=end_ns)


def annotate(attributes: Attributes, *, error: str | None = None) -> None:
    """Add `attributes` to the current span, and mark it failed with `error` when one is given;
    nothing when tracing is off."""
    if _tracer is None:
        return
    from opentelemetry.trace import Status, StatusCode, get_current_span

    current = get_current_span()
    current.set_attributes(attributes)
    if error is not None:
        current.set_status(Status(StatusCode.ERROR, error))


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span (to store with a job); None without one."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def _context(traceparent: str | None, *, root: bool = False) -> Any:
    """The context a traceparent names; without one, the current context (or, `root`, an empty
    one: a trace of its own). A malformed traceparent names none: a trace of its own."""
    if traceparent is None:
        if not root:
            return None
        from opentelemetry.context import Context

        return Context()
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})
