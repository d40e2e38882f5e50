"""Coalescing windows, stable notification ids, payloads, and what the sender does with each
delivery outcome (fakes for Kafka, Redis and the receiver)."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from events import ChatEvent, PushUnregistered, Topics
from projections.push import Registration
from streams.adapters.push_providers import Delivery, outcome_of_status, sign
from streams.adapters.push_sender import Sender
from streams.push_model import Coalescer, Job, Retry, decode_record, notification_id, preview_of


def job(mid: int, ts: int, *, device: str = "phone", cid: str = "dm:a:b", direct: bool = True) -> Job:
    return Job("b", device, cid, mid, "a", f"m{mid}", direct, ts)


def test_a_burst_is_one_window_and_a_later_message_opens_the_next() -> None:
    c = Coalescer(window_ms=2000, grace_ms=300)
    for mid, ts in ((1, 1000), (2, 1500), (3, 2999)):
        c.add(job(mid, ts), mark=(0, mid))
    assert c.due(3299) == []
    c.add(job(4, 3000), mark=(0, 4))  # past the first window by the log's clock: closes it
    [first] = c.due(3000)
    assert [j.message_id for j in first.jobs] == [1, 2, 3] and first.marks == [(0, 1), (0, 2), (0, 3)]
    [second] = c.due(5300)
    assert [j.message_id for j in second.jobs] == [4]
    assert first.notification_id == notification_id("b", "phone", 1) != second.notification_id


def test_devices_coalesce_apart_and_a_redelivered_job_counts_once() -> None:
    c = Coalescer(window_ms=2000, grace_ms=0)
    c.add(job(1, 0), mark=(0, 1))
    c.add(job(1, 0), mark=(0, 2))  # the notifier ran the batch twice (a crash)
    c.add(job(2, 10, device="tablet"), mark=(0, 3))
    windows = sorted(c.due(2010), key=lambda w: w.device_id)
    assert [(w.device_id, len(w.jobs), len(w.marks)) for w in windows] == [("phone", 1, 2), ("tablet", 1, 1)]


def test_same_jobs_make_the_same_id_after_a_restart() -> None:
    ids = []
    for _ in range(2):
        c = Coalescer(window_ms=2000)
        for mid in (7, 8, 9):
            c.add(job(mid, mid))
        ids.append(c.due(10**9)[0].notification_id)
    assert ids[0] == ids[1]


def test_payload_priority_badge_and_previews() -> None:
    c = Coalescer(window_ms=2000)
    c.add(job(1, 0, cid="g:1", direct=False))
    c.add(job(2, 1, cid="dm:a:b"))
    c.add(job(3, 2, cid="g:1", direct=False))
    [w] = c.due(10**9)
    p = w.payload(badge=7)
    assert p["priority"] == "high" and p["badge"] == 7
    assert p["conversations"] == [
        {"conversation_id": "g:1", "count": 2, "last_message_id": "3", "sender_id": "a", "preview": "m3"},
        {"conversation_id": "dm:a:b", "count": 1, "last_message_id": "2", "sender_id": "a", "preview": "m2"},
    ]
    assert preview_of("text", "x" * 150) == "x" * 100
    assert preview_of("image", "caption") is None
    assert preview_of("text", "secret", encrypted=True) is None


def test_records_round_trip() -> None:
    j = job(2**62, 5)
    assert decode_record(j.encode()) == j
    r = Retry({"user_id": "b", "device_id": "phone"}, 2, 10, 20)
    assert decode_record(r.encode()) == r
    for raw in (b"[]", b'{"kind": "other"}', b"nope", b'{"kind": "message"}'):
        with pytest.raises((ValueError, KeyError)):
            decode_record(raw)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "ok"),
        (204, "ok"),
        (301, "failed"),
        (400, "failed"),
        (404, "gone"),
        (410, "gone"),
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
    ],
)
def test_status_outcomes(status: int, outcome: str) -> None:
    assert outcome_of_status(status) == outcome


def test_signature_is_hmac_sha256_hex() -> None:
    # RFC 4231 test case 2
    assert sign(b"Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, Any]] = []

    async def send_and_wait(
        self, topic: str, *, key: bytes | None, value: bytes, headers: Any = None
    ) -> None:
        self.sent.append((topic, key, value, headers))


class FakeLog:
    def __init__(self) -> None:
        self.events: list[ChatEvent] = []

    async def append(self, event: ChatEvent) -> None:
        self.events.append(event)

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        pass


class Answer:
    name = "webhook"

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome
        self.calls = 0

    async def send(self, registration: Registration, payload: dict[str, Any]) -> Delivery:
        self.calls += 1
        return Delivery(self.outcome, "fake")  # type: ignore[arg-type]


REG = Registration("b", "phone", "webhook", "http://127.0.0.1/x", None, None, None, 123)


def sender(outcome: str, producer: FakeProducer, log: FakeLog, now: int) -> Sender:
    async def get_producer() -> Any:
        return producer

    return Sender(
        bootstrap="unused",
        group_id="g",
        topics=Topics("t."),
        producer=get_producer,
        event_log=log,
        registrations=None,  # type: ignore[arg-type]
        write_through=log,
        badge=None,  # type: ignore[arg-type]
        providers={"webhook": Answer(outcome)},
        sent=None,  # type: ignore[arg-type]
        window_ms=2000,
        retry_for_ms=600_000,
        first_backoff_ms=1000,
        max_backoff_ms=60_000,
        clock=lambda: now,
    )


async def test_outcomes_end_registrations_append_retries_and_dead_letter() -> None:
    payload = {"notification_id": "n1", "user_id": "b", "device_id": "phone"}
    producer, log = FakeProducer(), FakeLog()
    await sender("ok", producer, log, 1000)._attempt(REG, payload, attempt=0, first_ts=1000)
    assert producer.sent == [] and log.events == []

    await sender("gone", producer, log, 1000)._attempt(REG, payload, attempt=0, first_ts=1000)
    assert log.events == [
        PushUnregistered(user_id="b", device_id="phone", reason="gone", registered_ts=123, ts=1000)
    ]

    await sender("retry", producer, log, 5000)._attempt(REG, payload, attempt=2, first_ts=1000)
    [(topic, key, value, _)] = producer.sent
    assert (topic, key) == ("t.notifications", b"b")
    assert decode_record(value) == Retry(payload, 3, 1000, 5000 + 4000)  # backoff doubles

    producer.sent.clear()  # the budget (10 min) is spent: dead letter, not another retry
    await sender("retry", producer, log, 600_000)._attempt(REG, payload, attempt=9, first_ts=1000)
    [(topic, key, value, headers)] = producer.sent
    assert topic == "t.dead-letters" and orjson.loads(value) == payload
    assert dict(headers)["source"] == b"push-sender"

    producer.sent.clear()
    await sender("failed", producer, log, 1000)._attempt(REG, payload, attempt=0, first_ts=1000)
    assert [t for t, *_ in producer.sent] == ["t.dead-letters"]


class FakeSent:
    def __init__(self) -> None:
        self.recorded: set[int] = set()

    async def sent_many(self, wanted: Sequence[tuple[str, str, int]]) -> set[tuple[str, str, int]]:
        return {w for w in wanted if w[2] in self.recorded}


async def test_a_replayed_job_of_a_closed_window_is_not_counted_again() -> None:
    """The notifier, restarted, appends jobs again; one whose window the sender has closed
    (not yet delivered) must not land in the device's next window."""
    s = sender("ok", FakeProducer(), FakeLog(), 0)
    s._sent = FakeSent()  # type: ignore[assignment]
    records = [job(1, 0), job(2, 500), job(3, 2500), job(2, 500), job(1, 0)]  # the last two: replayed
    await s._take(
        0, [SimpleNamespace(offset=o, key=b"b", value=j.encode()) for o, j in enumerate(records[:3])]
    )  # type: ignore[misc]
    await s._take(
        0, [SimpleNamespace(offset=o + 3, key=b"b", value=j.encode()) for o, j in enumerate(records[3:])]
    )  # type: ignore[misc]
    windows = s._coalescer.due(10**9)
    assert [[j.message_id for j in w.jobs] for w in windows] == [[1, 2], [3]]
    assert s._held[0] == {0: 1, 1: 1, 2: 1}  # the replayed records are not held
