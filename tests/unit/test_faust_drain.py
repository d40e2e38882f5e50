"""streams.adapters.faust_drain: Faust's fetch loop hands records to the conductor without
four tasks per record (issue #19), and keeps what ``wait_first`` was there for: a callback
that blocks still gives way to a suspended flow (a rebalance) or a stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.adapters import faust_drain
from streams.adapters.faust_fetch import App as TidingsApp

TOPIC = "t-drain"
Callback = Callable[[Any], Awaitable[None]]


def _consumer(ours: bool) -> Any:
    app_class = TidingsApp if ours else faust.App
    app = app_class("t-drain", broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False)
    app.loop = asyncio.get_running_loop()
    consumer = app.consumer
    assert isinstance(consumer, faust_drain.Consumer) == ours
    assert isinstance(consumer, faust_aiokafka.Consumer)
    return consumer


def _close(consumer: Any) -> None:
    """The consumer thread's own loop, made but never started here."""
    loop = getattr(getattr(consumer, "_thread", None), "thread_loop", None)
    if loop is not None and not loop.is_running():
        loop.close()


def _records(n: int, partition: int = 0) -> list[tuple[TP, Any]]:
    tp = TP(TOPIC, partition)
    return [(tp, SimpleNamespace(topic=TOPIC, offset=i, key=b"k", value=f"v{i}".encode())) for i in range(n)]


async def _drain(consumer: Any, records: list[tuple[TP, Any]], callback: Callback) -> Any:
    """Runs the consumer's drain loop over one fetch of ``records``; then the fetcher stops."""
    fetcher = SimpleNamespace(_stopped=asyncio.Event())

    async def getmany(**_: Any) -> AsyncIterator[tuple[TP, Any]]:
        for record in records:
            yield record
        fetcher._stopped.set()

    consumer.getmany = getmany
    consumer.callback = callback
    await asyncio.wait_for(consumer._drain_messages(fetcher), timeout=10)
    return consumer


class _TaskCount:
    def __init__(self) -> None:
        self.made = 0

    def __enter__(self) -> _TaskCount:
        loop = asyncio.get_running_loop()
        self._previous = loop.get_task_factory()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            self.made += 1
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(factory)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.get_running_loop().set_task_factory(self._previous)


async def _tasks_for(ours: bool, n: int) -> int:
    consumer = _consumer(ours)
    got: list[bytes] = []

    async def callback(message: Any) -> None:
        got.append(message.value)

    with _TaskCount() as tasks:
        await _drain(consumer, _records(n), callback)
    _close(consumer)
    assert got == [f"v{i}".encode() for i in range(n)]
    assert consumer._read_offset[TP(TOPIC, 0)] == n - 1
    return tasks.made


async def test_no_task_per_record_while_callbacks_do_not_block() -> None:
    # Per fetch (the test's wait_for, the loop's sleep(0)) the same in both; per record:
    fausts = await _tasks_for(False, 200) - await _tasks_for(False, 100)
    ours = await _tasks_for(True, 200) - await _tasks_for(True, 100)
    assert fausts >= 4 * 100  # wait_first's four tasks per record
    assert ours == 0


@pytest.mark.parametrize("ours", [False, True])
async def test_a_blocked_callback_gives_way_to_a_suspended_flow(ours: bool) -> None:
    """As on a rebalance: the conductor waits (a full stream buffer here) when the flow is
    suspended; the drain cancels it and gets on (Faust's loop then sets the read offset)."""
    consumer = _consumer(ours)
    never = asyncio.Event()
    seen: list[int] = []
    cancelled: list[int] = []

    async def callback(message: Any) -> None:
        seen.append(message.offset)
        if message.offset == 1:
            asyncio.get_running_loop().call_later(0.05, consumer.stop_flow)
            try:
                await never.wait()
            except asyncio.CancelledError:
                cancelled.append(message.offset)
                raise

    await _drain(consumer, _records(4), callback)
    _close(consumer)
    assert cancelled == [1]
    assert consumer._read_offset[TP(TOPIC, 0)] == 3
    if ours:
        # Faust's loop handed 2 and 3 to a callback that met the suspended flow control (not
        # in this fake) and was cancelled; here they are not handed on at all.
        assert seen == [0, 1]


async def test_a_set_suspend_flow_stops_the_drain_before_the_next_record() -> None:
    consumer = _consumer(True)
    seen: list[int] = []

    async def callback(message: Any) -> None:
        seen.append(message.offset)
        if message.offset == 2:
            consumer.stop_flow()  # a rebalance between two records

    await _drain(consumer, _records(6), callback)
    _close(consumer)
    assert seen == [0, 1, 2]


@pytest.mark.parametrize("ours", [False, True])
async def test_a_blocked_callback_gives_way_to_a_stop(ours: bool) -> None:
    consumer = _consumer(ours)
    never = asyncio.Event()
    cancelled: list[int] = []

    async def callback(message: Any) -> None:
        asyncio.get_running_loop().call_later(0.05, consumer._stopped.set)
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(message.offset)
            raise

    await _drain(consumer, _records(1), callback)
    _close(consumer)
    assert cancelled == [0]


@pytest.mark.parametrize("ours", [False, True])
async def test_a_callback_that_waits_and_resumes_completes_in_order(ours: bool) -> None:
    """A stream buffer that is full for a moment: the callback waits, then finishes, before the
    next record is handed on; its result and the values it awaited pass through."""
    consumer = _consumer(ours)
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    got: list[int] = []

    async def reader() -> None:
        while len(got) < 5:
            got.append(await queue.get())
            await asyncio.sleep(0.001)

    async def callback(message: Any) -> None:
        await asyncio.sleep(0)
        await queue.put(message.offset)
        assert await asyncio.sleep(0, result="x") == "x"

    read = asyncio.create_task(reader())
    await _drain(consumer, _records(5), callback)
    await asyncio.wait_for(read, timeout=5)
    _close(consumer)
    assert got == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("blocks", [False, True])
async def test_a_callback_error_stops_the_drain(blocks: bool) -> None:
    consumer = _consumer(True)
    seen: list[int] = []

    async def callback(message: Any) -> None:
        seen.append(message.offset)
        if blocks:
            await asyncio.sleep(0.01)
        if message.offset == 1:
            raise ValueError("poison")

    with pytest.raises(ValueError, match="poison"):
        await _drain(consumer, _records(3), callback)
    _close(consumer)
    assert seen == [0, 1]


async def test_started_coroutine_passes_values_and_cancellation_through() -> None:
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    finished: list[str] = []

    async def work() -> str:
        first = await gate
        try:
            await asyncio.sleep(10)
        finally:
            finished.append(first)
        return "never"

    coro = work()
    yielded = coro.send(None)
    assert yielded is gate
    task = asyncio.ensure_future(faust_drain._Started(coro, yielded))
    await asyncio.sleep(0)
    gate.set_result("opened")
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == ["opened"]


async def test_started_coroutine_returns_its_value() -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        return 7

    coro = work()
    yielded = coro.send(None)
    assert await faust_drain._Started(coro, yielded) == 7
