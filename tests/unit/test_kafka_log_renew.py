"""``KafkaEventLog`` replaces a producer that keeps failing (an idempotent aiokafka producer can
wedge after a broker outage), and only then: a failure is never an acknowledgement."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, OutOfOrderSequenceNumber

from commands.adapters.kafka_log import KafkaEventLog
from events import MessageSent, Topics
from events.errors import Unavailable
from tests.factories import message_sent


class FakeProducer:
    def __init__(self, *, broken: bool) -> None:
        self.broken = broken
        self.sent: list[bytes] = []
        self.stopped = False

    async def send_and_wait(self, topic: str, value: bytes, key: bytes, headers: Any = None) -> None:
        if self.broken:
            raise OutOfOrderSequenceNumber()
        self.sent.append(value)

    async def stop(self) -> None:
        self.stopped = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _event(n: int) -> MessageSent:
    return message_sent(n, conversation_id="dm:a:b", sender_id="a", client_msg_id=str(n), body="hi", ts=0)


async def test_a_producer_that_keeps_failing_is_replaced_after_the_window() -> None:
    clock = Clock()
    wedged = FakeProducer(broken=True)
    fresh: list[FakeProducer] = []

    async def renew() -> Any:
        fresh.append(FakeProducer(broken=False))
        return fresh[-1]

    log = KafkaEventLog(wedged, Topics("t."), renew=renew, renew_after_s=10, clock=clock)
    for _ in range(3):  # failing, but not for long enough yet: keep the producer
        with pytest.raises(Unavailable):
            await log.append(_event(1))
        clock.now += 3
    assert fresh == [] and log.current is wedged
    clock.now += 2  # 11 s of failures without a success
    with pytest.raises(Unavailable):  # this append failed: it is not acknowledged
        await log.append(_event(2))
    assert len(fresh) == 1 and log.current is fresh[0]
    await log.append(_event(3))
    assert len(fresh[0].sent) == 1
    await log.close()
    assert wedged.stopped and fresh[0].stopped


async def test_no_renewal_while_appends_succeed_now_and_then() -> None:
    clock = Clock()
    flaky = FakeProducer(broken=False)
    calls = 0

    async def renew() -> Any:
        nonlocal calls
        calls += 1
        return FakeProducer(broken=False)

    log = KafkaEventLog(flaky, Topics("t."), renew=renew, renew_after_s=10, clock=clock)
    for step in range(10):
        flaky.broken = step % 3 != 0
        clock.now += 4
        with contextlib.suppress(Unavailable):
            await log.append(_event(step))
    assert calls == 0


async def test_a_renewal_that_cannot_start_keeps_the_old_producer_and_tries_later() -> None:
    clock = Clock()
    wedged = FakeProducer(broken=True)
    attempts = 0

    async def renew() -> Any:
        nonlocal attempts
        attempts += 1
        raise KafkaTimeoutError()  # the broker is still down

    log = KafkaEventLog(wedged, Topics("t."), renew=renew, renew_after_s=10, clock=clock)
    clock.now += 11
    with pytest.raises(Unavailable):
        await log.append(_event(1))
    with pytest.raises(Unavailable):
        await log.append(_event(2))  # too soon to try again
    assert attempts == 1 and log.current is wedged
    clock.now += 11
    with pytest.raises(Unavailable):
        await log.append(_event(3))
    assert attempts == 2
