"""The gateway producer's linger follows the send rate: a send with none other in flight goes at
once (no timer), sends that come while others are in flight go together after ``linger_ms``,
in the order they came, in one loop turn (issue #19)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from commands.adapters.kafka_log import KafkaEventLog, LingeringProducer


class Broker:
    """Stands in for aiokafka's send: records what reached it, when (loop turns counted), and
    confirms each send when the test says so."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, int]] = []
        self.confirm: dict[bytes, asyncio.Future[None]] = {}
        self.turn = 0
        self._arrived = asyncio.Condition()

    async def arrived(self, n: int) -> None:
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.got) >= n)

    async def send_and_wait(self, producer: Any, topic: str, value: bytes, *args: Any) -> None:
        self.got.append((value, self.turn))
        self.confirm[value] = asyncio.get_running_loop().create_future()
        async with self._arrived:
            self._arrived.notify_all()
        await self.confirm[value]


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Broker:
    b = Broker()

    async def fake(self: Any, topic: str, value: bytes | None = None, *args: Any) -> None:
        assert value is not None
        await b.send_and_wait(self, topic, value, *args)

    monkeypatch.setattr(AIOKafkaProducer, "send_and_wait", fake)
    return b


@pytest.fixture
async def made() -> Any:
    """Makes producers (never started: the broker is stood in for) and stops them after."""
    producers: list[LingeringProducer] = []

    def make(linger_ms: int) -> LingeringProducer:
        producers.append(LingeringProducer(linger_ms, bootstrap_servers="127.0.0.1:1"))
        return producers[-1]

    yield make
    for producer in producers:
        await producer.stop()


async def _ticking(broker: Broker) -> None:
    while True:
        broker.turn += 1
        await asyncio.sleep(0)


async def test_the_producer_has_no_linger_of_its_own_and_keeps_acks_all_and_idempotence() -> None:
    producer = KafkaEventLog.producer("127.0.0.1:1", linger_ms=2)
    assert isinstance(producer, LingeringProducer) and producer.linger_s == 0.002
    assert producer._message_accumulator._linger_time == 0  # aiokafka's own
    assert producer._txn_manager is not None  # enable_idempotence
    assert producer._sender._acks == -1  # "all"
    await producer.stop()


async def test_a_send_with_none_in_flight_goes_at_once(broker: Broker, made: Any) -> None:
    producer = made(50)
    send = asyncio.create_task(producer.send_and_wait("t", b"a", b"k"))
    await asyncio.sleep(0)
    assert [v for v, _ in broker.got] == [b"a"]  # no wait for the 50 ms linger
    broker.confirm[b"a"].set_result(None)
    await send
    later = asyncio.create_task(producer.send_and_wait("t", b"b", b"k"))
    await asyncio.sleep(0)
    assert [v for v, _ in broker.got] == [b"a", b"b"]  # nothing in flight any more: at once too
    broker.confirm[b"b"].set_result(None)
    await later


async def test_sends_while_others_are_in_flight_go_together_after_the_linger_in_order(
    broker: Broker, made: Any
) -> None:
    producer = made(200)
    ticker = asyncio.create_task(_ticking(broker))
    try:
        first = asyncio.create_task(producer.send_and_wait("t", b"first", b"k"))
        await asyncio.sleep(0)
        assert [v for v, _ in broker.got] == [b"first"]
        loop = asyncio.get_running_loop()
        started = loop.time()
        rest = []
        for name in (b"r1", b"r2", b"r3"):
            rest.append(asyncio.create_task(producer.send_and_wait("t", name, b"k")))
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        assert [v for v, _ in broker.got] == [b"first"]  # waiting for company
        await asyncio.wait_for(broker.arrived(4), 5)
        assert loop.time() - started >= 0.19  # the linger, from the first waiting send
        assert [v for v, _ in broker.got] == [b"first", b"r1", b"r2", b"r3"]  # in order
        assert len({turn for _, turn in broker.got[1:]}) == 1  # in one loop turn
        for future in broker.confirm.values():
            future.set_result(None)
        await asyncio.gather(first, *rest)
    finally:
        ticker.cancel()


async def test_a_cancelled_waiting_send_never_goes_and_the_others_still_do(broker: Broker, made: Any) -> None:
    producer = made(20)
    first = asyncio.create_task(producer.send_and_wait("t", b"first", b"k"))
    await asyncio.sleep(0)
    gone = asyncio.create_task(producer.send_and_wait("t", b"gone", b"k"))
    kept = asyncio.create_task(producer.send_and_wait("t", b"kept", b"k"))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0.05)
    assert [v for v, _ in broker.got] == [b"first", b"kept"]
    for future in broker.confirm.values():
        future.set_result(None)
    await asyncio.gather(first, kept)
    assert gone.cancelled()
    # every count back to none in flight: the next send goes at once
    alone = asyncio.create_task(producer.send_and_wait("t", b"alone", b"k"))
    await asyncio.sleep(0)
    assert broker.got[-1][0] == b"alone"
    broker.confirm[b"alone"].set_result(None)
    await alone


async def test_a_failed_send_leaves_no_count_behind(monkeypatch: pytest.MonkeyPatch, made: Any) -> None:
    calls: list[bytes] = []

    async def failing(self: Any, topic: str, value: bytes | None = None, *args: Any) -> None:
        assert value is not None
        calls.append(value)
        raise RuntimeError("broker said no")

    monkeypatch.setattr(AIOKafkaProducer, "send_and_wait", failing)
    producer = made(1000)
    with pytest.raises(RuntimeError):
        await producer.send_and_wait("t", b"a", b"k")
    second = asyncio.gather(producer.send_and_wait("t", b"b", b"k"), return_exceptions=True)
    await asyncio.wait_for(second, 0.5)
    assert calls == [b"a", b"b"]  # b did not wait the 1 s linger: nothing was in flight


async def test_a_linger_of_0_never_waits(broker: Broker, made: Any) -> None:
    producer = made(0)
    sends = [asyncio.create_task(producer.send_and_wait("t", bytes([65 + i]), b"k")) for i in range(3)]
    await asyncio.sleep(0)
    assert [v for v, _ in broker.got] == [b"A", b"B", b"C"]
    for future in broker.confirm.values():
        future.set_result(None)
    await asyncio.gather(*sends)
