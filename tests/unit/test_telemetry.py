"""Metrics and tracing helpers without services: the frame's send time, the projector's hooks,
and tracing off (no spans) versus on (one trace from the append to the worker's stages)."""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from events import ChatEvent, MessageSent, encode_event
from events.errors import Unavailable
from projections.memory import MemoryMessages
from projections.wire import message_frame, message_frame_ts, message_json
from query_api import metrics
from streams.projector import Projector, Record
from tests.factories import message_sent
from tests.unit.test_projector import Letters, _no_sleep
from tidings import telemetry
from tidings.settings import Settings


def _message(mid: int, ts: int = 1_767_000_000_123, body: str = "hi") -> MessageSent:
    return message_sent(mid, body=body, ts=ts)


@pytest.mark.parametrize("body", ["hi", '"ts":5}}', "x" * 3000, 'tricky ,"ts":42}} end'])
def test_message_frame_ts_reads_the_send_time_of_a_pushed_frame(body: str) -> None:
    frame = message_frame(message_json(_message(7, body=body)))
    assert message_frame_ts(frame) == 1_767_000_000_123
    assert orjson.loads(frame)["message"]["ts"] == 1_767_000_000_123


@pytest.mark.parametrize(
    "frame",
    [
        b'{"type":"receipt","conversation_id":"c","ts":5}',
        b'{"type":"typing","conversation_id":"c"}',
        b'{"type":"message","message":{"ts":"x"}}',
        b"",
    ],
)
def test_message_frame_ts_is_none_for_other_frames(frame: bytes) -> None:
    assert message_frame_ts(frame) is None


def test_presence_counter_is_defined_for_the_presence_code() -> None:
    metrics.PRESENCE_TRANSITIONS.labels("online").inc()
    assert metrics.PRESENCE_TRANSITIONS.labels("online")._value.get() >= 1


async def test_unavailable_stores_are_reported_per_attempt() -> None:
    messages, seen = MemoryMessages(), []
    messages.fail_next = 2
    projector = Projector(
        [messages], Letters(), sleep=_no_sleep, on_unavailable=lambda stage, n: seen.append((stage, n))
    )
    await projector.handle([Record("t", 0, 1, b"k", encode_event(_message(1)))])
    assert seen == [(messages.name, 1), (messages.name, 1)]


def test_tracing_off_makes_no_span_objects() -> None:
    telemetry.configure(Settings(tracing="off"), "test")
    assert not telemetry.enabled()
    assert telemetry.span("a") is telemetry.span("b", {"k": 1})  # one shared no-op


def _read(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "spans.jsonl"
    telemetry.configure(Settings(tracing="file", tracing_file=path), "unit")
    try:
        yield path
    finally:
        telemetry.configure(Settings(tracing="off"), "unit")


async def test_trace_context_crosses_the_record_headers(traced: Path) -> None:
    with telemetry.span("gateway.send"), telemetry.trace_kafka_append("topic") as headers:
        pass
    assert [k for k, _ in headers] == ["traceparent"]

    class Stage:
        name = "recent"

        async def apply(self, events: Sequence[ChatEvent]) -> None:
            # what the deliver stage would put in its pushes' envelope, per event
            published.append(
                {e.message_id: telemetry.traceparent_of(e) for e in events if isinstance(e, MessageSent)}
            )
            if failures:
                failures.pop()
                raise Unavailable("down once")

    failures = [1]
    published: list[dict[int, str | None]] = []
    record = Record("topic", 3, 9, b"k", encode_event(_message(1)), dict(headers))
    untraced = Record("topic", 3, 10, b"k", encode_event(_message(2)))
    projector = Projector([Stage()], Letters(), sleep=_no_sleep, tracer=telemetry.RecordTracer("deliver"))
    await projector.handle([record, untraced])
    assert telemetry.traceparent_of(_message(1)) is None  # only while the stage applies

    # the recipient gateway, from the traceparent the deliver stage published
    traceparent = published[-1][1]
    assert traceparent is not None and published[-1][2] is None
    with telemetry.child_of(traceparent.encode(), "gateway.deliver", {"tidings.recipient": "b"}) as span:
        assert span is not None

    spans = _read(traced)
    by_name = {s["name"]: s for s in spans}
    assert sorted(by_name) == [
        "deliver.push",
        "gateway.deliver",
        "gateway.send",
        "kafka.append",
        "worker.consume",
    ]
    assert len({s["context"]["trace_id"] for s in spans}) == 1
    assert by_name["worker.consume"]["parent_id"] == by_name["kafka.append"]["context"]["span_id"]
    assert by_name["deliver.push"]["parent_id"] == by_name["worker.consume"]["context"]["span_id"]
    assert by_name["worker.consume"]["attributes"]["messaging.kafka.offset"] == 9
    assert traceparent.split("-")[2] == by_name["deliver.push"]["context"]["span_id"].removeprefix("0x")
    assert by_name["gateway.deliver"]["parent_id"] == by_name["deliver.push"]["context"]["span_id"]
    assert by_name["gateway.deliver"]["kind"] == "SpanKind.CONSUMER"


def test_tracing_off_a_deliver_span_is_the_no_op() -> None:
    telemetry.configure(Settings(tracing="off"), "test")
    with telemetry.child_of(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x") as span:
        assert span is None
    assert telemetry.traceparent_of(_message(1)) is None
