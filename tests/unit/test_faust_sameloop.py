"""streams.adapters.faust_sameloop: the worker's consumer runs its aiokafka consumer in the
agents' loop. No thread is started; a fetch, a commit and the rebalance callbacks run in the
caller's loop and task. Each test also runs Faust's consumer thread (the app's
``consumer_in_loop`` False) to show the test tells the two apart."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka import TopicPartition
from mode.threads import WorkerThread

from streams.adapters import faust_sameloop
from tests.unit.offline_app import offline_app

TP = TopicPartition("t.events", 0)


def _where() -> tuple[asyncio.AbstractEventLoop, threading.Thread, asyncio.Task[Any] | None]:
    return asyncio.get_running_loop(), threading.current_thread(), asyncio.current_task()


class _Subscriptions:
    @contextlib.contextmanager
    def fetch_context(self) -> Iterator[None]:
        yield


class _FakeAiokafka:
    """What Faust's consumer thread uses of an ``AIOKafkaConsumer``, recording where each call
    ran (a unit test: no broker)."""

    def __init__(self) -> None:
        self.where: dict[str, tuple[Any, ...]] = {}
        self._closed = False
        self._max_poll_records = None
        self._coordinator = SimpleNamespace(generation=7)
        self._fetcher = SimpleNamespace(
            _closed=False, _subscriptions=_Subscriptions(), fetched_records=self._fetched
        )

    async def start(self) -> None:
        self.where["start"] = _where()

    async def stop(self) -> None:
        self.where["stop"] = _where()

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def commit(self, offsets: Any) -> None:
        self.where["commit"] = _where()

    async def _fetched(self, active: Any, **limits: Any) -> Any:  # timeout=, max_records=
        self.where["fetch"] = _where()
        return {TP: []}


@contextlib.asynccontextmanager
async def _started(
    in_loop: bool, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[faust.App, Any, _FakeAiokafka]]:
    app = offline_app("t-sameloop")  # the aiokafka consumer is a fake
    app.consumer_in_loop = in_loop
    app.loop = asyncio.get_running_loop()
    consumer = app.consumer
    thread = consumer._thread  # type: ignore[attr-defined]
    fake = _FakeAiokafka()
    monkeypatch.setattr(thread, "_create_consumer", lambda loop: fake)
    # Faust's thread hands rebalance callbacks to the consumer's method queue; start it as
    # the consumer's start would (the in-loop consumer does not use it).
    await consumer._method_queue.start()  # type: ignore[attr-defined]
    await thread.start()
    try:
        yield app, thread, fake
    finally:
        await thread.stop()
        await consumer._method_queue.stop()  # type: ignore[attr-defined]


def _consumer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if isinstance(t, WorkerThread) and t.is_alive()]


@pytest.mark.parametrize("in_loop", [True, False])
async def test_the_consumer_starts_no_thread_and_fetches_and_commits_in_the_callers_task(
    in_loop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _consumer_threads()
    async with _started(in_loop, monkeypatch) as (app, thread, fake):
        assert isinstance(thread, faust_sameloop.InLoop) == in_loop
        started_threads = [t for t in _consumer_threads() if t not in before]
        # Awaited, not wrapped in wait_for (a task of its own): the task is looked at below.
        records = await app.consumer._getmany({TP}, 0.1)  # type: ignore[attr-defined]
        assert records == {TP: []}
        assert await app.consumer._commit({TP: 3})  # type: ignore[attr-defined]
    here = _where()
    if in_loop:
        assert started_threads == []
        for call in ("start", "fetch", "commit", "stop"):
            assert fake.where[call][:2] == here[:2], call
        assert fake.where["fetch"][2] is here[2]  # awaited in the caller's own task
    else:
        assert len(started_threads) == 1
        for call in ("start", "fetch", "commit", "stop"):
            assert fake.where[call][0] is not here[0] and fake.where[call][1] is not here[1], call


@pytest.mark.parametrize("in_loop", [True, False])
async def test_rebalance_callbacks_reach_the_consumer_in_the_listeners_task(
    in_loop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, Any, tuple[Any, ...]]] = []
    async with _started(in_loop, monkeypatch) as (app, thread, _):
        consumer = app.consumer

        async def revoked(tps: set[Any]) -> None:
            calls.append(("revoked", tps, _where()))

        async def assigned(tps: set[Any], generation_id: int = 0) -> None:
            calls.append(("assigned", (tps, generation_id), _where()))

        monkeypatch.setattr(consumer, "on_partitions_revoked", revoked)
        monkeypatch.setattr(consumer, "on_partitions_assigned", assigned)
        monkeypatch.setattr(
            app, "on_rebalance_start", lambda: calls.append(("rebalance_start", None, _where()))
        )
        listener = thread._rebalance_listener
        if in_loop:
            await listener.on_partitions_revoked([TP])
            await listener.on_partitions_assigned([TP])
            listener_task = asyncio.current_task()
        else:
            # aiokafka calls the listener in the consumer's (thread's) loop.
            async def rebalance() -> asyncio.Task[Any] | None:
                await listener.on_partitions_revoked([TP])
                await listener.on_partitions_assigned([TP])
                return asyncio.current_task()

            future = asyncio.run_coroutine_threadsafe(rebalance(), thread.thread_loop)
            listener_task = await asyncio.wait_for(asyncio.wrap_future(future), 5)
    assert [(name, args) for name, args, _ in calls] == [
        ("rebalance_start", None),
        ("revoked", {TP}),
        ("assigned", ({TP}, 7)),
    ]
    handler_tasks = {where[2] for name, _, where in calls if name != "rebalance_start"}
    # In the loop: the listener awaits the consumer's handlers itself. Faust's thread: a
    # method queue worker of the agents' loop runs them while the listener waits.
    assert (handler_tasks == {listener_task}) == in_loop
