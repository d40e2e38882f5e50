"""OpenTelemetry tracing for the runnables: one trace per message from the gateway, through
Kafka (W3C ``traceparent`` in the record headers), to the worker's projections and the delivery
push, and on through Redis pub/sub (the ``traceparent`` in the payload's envelope,
``projections.wire.traced``) to the recipient gateway's ``gateway.deliver`` span around the
socket writes.

Off by default (``TIDINGS_TRACING=off``), and then cheap: nothing here creates a span object,
``span()`` hands back one shared no-op context manager, and the adapters are built without
their tracing hooks (``trace_kafka_append`` and ``RecordTracer`` are not passed in at all).

``configure`` is called once per process by its composition root: each Sanic worker in
``before_server_start``, each Faust worker in ``build_worker_app``. Exporters:
- ``console``: spans printed to stdout (batched);
- ``otlp``: OTLP over HTTP to ``TIDINGS_OTLP_ENDPOINT`` (needs ``opentelemetry-exporter-otlp-proto-http``,
  the ``otlp`` extra);
- ``file``: one JSON object per span appended to ``TIDINGS_TRACING_FILE`` (tests read it).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from events import ChatEvent
from streams.projector import Record

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import Span, Tracer

    from tidings.settings import Settings

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_NOOP: AbstractContextManager[None] = contextlib.nullcontext()
_tracer: Tracer | None = None

# The deliver stage's work is the delivery push (hot cache write and pub/sub publish).
STAGE_SPAN_NAMES = {"recent": "deliver.push"}
# While a stage applies a traced batch: id(event) -> that event's stage span (events of the
# batch live until the stage returns, so their ids are stable meanwhile).
_stage_spans: contextvars.ContextVar[dict[int, Span] | None] = contextvars.ContextVar(
    "tidings_stage_spans", default=None
)


def enabled() -> bool:
    return _tracer is not None


def configure(settings: Settings, service: str) -> bool:
    """Set up tracing for this process from ``settings``; returns whether it is on."""
    global _tracer
    if settings.tracing == "off":
        _tracer = None
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service, "process.pid": os.getpid()}))
    if settings.tracing == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif settings.tracing == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
    else:
        if settings.tracing_file is None:
            raise ValueError("TIDINGS_TRACING=file needs TIDINGS_TRACING_FILE")
        provider.add_span_processor(SimpleSpanProcessor(_json_lines_exporter(settings.tracing_file)))
    _tracer = provider.get_tracer("tidings")
    return True


def span(name: str, attributes: dict[str, Any] | None = None) -> AbstractContextManager[Any]:
    """A span around a block (the current span's child); the shared no-op when tracing is off."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=attributes)


@contextlib.contextmanager
def trace_kafka_append(topic: str) -> Iterator[list[tuple[str, bytes]]]:
    """A producer span for one append; yields the record headers that carry its context."""
    from opentelemetry.propagate import inject
    from opentelemetry.trace import SpanKind

    assert _tracer is not None, "built only when tracing is on"
    with _tracer.start_as_current_span(
        "kafka.append", kind=SpanKind.PRODUCER, attributes={"messaging.destination.name": topic}
    ):
        carrier: dict[str, str] = {}
        inject(carrier)
        yield [(k, v.encode()) for k, v in carrier.items()]


@contextlib.contextmanager
def child_of(
    traceparent: bytes, name: str, attributes: dict[str, Any] | None = None
) -> Iterator[Span | None]:
    """A consumer span whose parent is the remote ``traceparent`` (the gateway's
    ``gateway.deliver`` under the worker's ``deliver.push``); yields None when tracing is off."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    parent = extract({TRACEPARENT: traceparent.decode(errors="replace")})
    with _tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as s:
        yield s


def traceparent_of(event: ChatEvent) -> str | None:
    """The W3C ``traceparent`` of ``event``'s span in the stage being applied, or None when the
    event's record carried no trace context (the deliver stage puts it in what it publishes)."""
    spans = _stage_spans.get()
    found = spans.get(id(event)) if spans is not None else None
    if found is None:
        return None
    from opentelemetry.propagate import inject
    from opentelemetry.trace import set_span_in_context

    carrier: dict[str, str] = {}
    inject(carrier, context=set_span_in_context(found))
    return carrier.get(TRACEPARENT)


class RecordTracer:
    """The worker side (``streams.projector.Tracer``): for each record of a batch that carries
    a ``traceparent``, a ``worker.consume`` span (child of the sender's context) and, per stage,
    a child span over the stage's batch apply, which ``traceparent_of`` hands on. Records
    without one get no spans."""

    def __init__(self, role: str) -> None:
        self._role = role

    def batch(self, records: Sequence[tuple[Record, ChatEvent]]) -> _BatchTrace | None:
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind

        if _tracer is None:
            return None
        spans: list[tuple[ChatEvent, Span]] = []
        for record, event in records:
            raw = record.headers.get(TRACEPARENT)
            if raw is None:
                continue
            carrier = {TRACEPARENT: raw.decode(errors="replace")}
            state = record.headers.get(TRACESTATE)
            if state is not None:
                carrier[TRACESTATE] = state.decode(errors="replace")
            spans.append(
                (
                    event,
                    _tracer.start_span(
                        "worker.consume",
                        context=extract(carrier),
                        kind=SpanKind.CONSUMER,
                        attributes={
                            "tidings.role": self._role,
                            "messaging.destination.name": record.topic,
                            "messaging.kafka.partition": record.partition,
                            "messaging.kafka.offset": record.offset,
                            "tidings.batch_size": len(records),
                        },
                    ),
                )
            )
        return _BatchTrace(spans) if spans else None


class _BatchTrace:
    def __init__(self, parents: list[tuple[ChatEvent, Span]]) -> None:
        self._parents = parents

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        from opentelemetry.trace import set_span_in_context

        assert _tracer is not None
        span_name = STAGE_SPAN_NAMES.get(name, f"project.{name}")
        children = {
            id(event): _tracer.start_span(
                span_name, context=set_span_in_context(p), attributes={"tidings.stage": name}
            )
            for event, p in self._parents
        }
        token = _stage_spans.set(children)
        try:
            yield
        finally:
            _stage_spans.reset(token)
            for child in children.values():
                child.end()

    def close(self) -> None:
        for _, parent in self._parents:
            parent.end()


def _json_lines_exporter(path: Path) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesExporter(SpanExporter):
        """Appends one JSON line per span; O_APPEND keeps lines of several processes whole."""

        def __init__(self) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            data = "".join(s.to_json(indent=None) + "\n" for s in spans).encode()
            os.write(self._fd, data)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    return JsonLinesExporter()
