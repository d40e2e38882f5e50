"""streams.adapters.faust_batches: a topic of one agent goes to it a fetch at a time, past Faust's
path per record (issue #19), and keeps what that path guaranteed: order per partition, an
offset acked only once its batch was handled, a revocation that drops what is queued and waits
for the batch in hand, back-pressure that gives way to a suspended flow. Faust's own consumer and
app here, with no broker; ``tests/integration/test_faust_drain.py`` runs the same against Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from streams.adapters.faust_batches import BatchAgent
from streams.adapters.faust_fetch import App as TidingsApp
from streams.projector import Record
from tests.polling import until as _until
from tests.unit.offline_app import offline_app

TOPIC, OTHER = "t-batches", "t-other"


def _record(topic: str, partition: int, offset: int, headers: Sequence[tuple[str, bytes]] = ()) -> Any:
    return ConsumerRecord(
        topic, partition, offset, 0, 0, b"k", f"v{offset}".encode(), None, 1, 2, list(headers)
    )


def _records(topic: str, partition: int, offsets: range) -> list[Any]:
    return [_record(topic, partition, o) for o in offsets]


class _Handler:
    """Records every batch; waits on ``gate`` (when set) before returning."""

    def __init__(self, gate: asyncio.Event | None = None, fail: bool = False) -> None:
        self.batches: list[list[Record]] = []
        self.entered = asyncio.Event()
        self.gate = gate
        self.fail = fail

    async def __call__(self, batch: Sequence[Record]) -> None:
        self.batches.append(list(batch))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("boom")

    def offsets(self, partition: int) -> list[int]:
        return [r.offset for b in self.batches for r in b if r.partition == partition]


async def _app(handler: _Handler, *, max_: int = 10, within: float = 0.02) -> tuple[Any, Any, BatchAgent]:
    app = TidingsApp("t-batches", broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False)
    app.loop = asyncio.get_running_loop()
    source = app.topic(TOPIC)
    app.batch_agent(source, handler, name="project", max_=max_, within=within)
    # What the app's start and the conductor's subscription do: the topic is subscribed, acked.
    app.topics.add(source)
    await cast(Any, app.topics)._update_indices()
    consumer: Any = app.consumer
    consumer.highwater = lambda tp: 0
    return app, consumer, app.batch_agents[TOPIC]


def _fetch(consumer: Any, records: dict[TP, list[Any]]) -> None:
    """The consumer's next fetch brings ``records``."""

    async def wait_next_records(timeout: float) -> tuple[dict[TP, list[Any]], None]:  # noqa: ASYNC109
        return records, None

    consumer._wait_next_records = wait_next_records


async def _getmany(consumer: Any) -> list[tuple[TP, Any]]:
    return [item async for item in consumer.getmany(timeout=1.0)]


async def _running(agent: BatchAgent) -> asyncio.Task[None]:
    task = asyncio.ensure_future(agent.run())
    await asyncio.sleep(0)
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_create_app_gives_each_topic_of_one_reader_a_batch_agent() -> None:
    app: Any = offline_app("t-batches-roles")
    assert list(app.batch_agents) == ["t.conversation-events"]
    # Faust's agents are left for topics that more than one agent reads (the media topic).
    assert not list(app.agents)


async def test_a_fetch_goes_to_the_agent_by_partition_and_other_topics_record_by_record() -> None:
    handler = _Handler()
    app, consumer, agent = await _app(handler, max_=100)
    p0, p1, other = TP(TOPIC, 0), TP(TOPIC, 1), TP(OTHER, 0)
    _fetch(
        consumer,
        {
            p0: _records(TOPIC, 0, range(5)),
            other: _records(OTHER, 0, range(3)),
            p1: _records(TOPIC, 1, range(2)),
        },
    )
    yielded = await _getmany(consumer)
    # Only the other topic's records became Faust messages.
    assert [(tp, m.offset) for tp, m in yielded] == [(other, 0), (other, 1), (other, 2)]
    assert agent._queued == 7
    assert consumer._read_offset[p0] == 4 and consumer._read_offset[p1] == 1
    task = await _running(agent)
    await _until(lambda: len(handler.batches) == 1)
    await _stop(task)
    (batch,) = handler.batches
    assert [(r.topic, r.partition, r.offset, r.key, r.value) for r in batch] == [
        (TOPIC, 0, o, b"k", f"v{o}".encode()) for o in range(5)
    ] + [(TOPIC, 1, o, b"k", f"v{o}".encode()) for o in range(2)]
    # Acked together after the handler: the next commit of each partition is past its batch.
    assert consumer._acked[p0] == [0, 1, 2, 3, 4] and consumer._acked[p1] == [0, 1]
    assert consumer._new_offset(p0) == 5 and consumer._new_offset(p1) == 2
    assert app.monitor.stream_inbound_time.keys() >= {p0, p1}


async def test_records_already_read_are_not_handed_on_again() -> None:
    handler = _Handler()
    _, consumer, agent = await _app(handler)
    tp = TP(TOPIC, 0)
    consumer._read_offset[tp] = 6
    _fetch(consumer, {tp: _records(TOPIC, 0, range(3, 9))})
    await _getmany(consumer)
    assert [r.offset for _, piece in agent._pieces for r in piece] == [6, 7, 8]
    assert consumer._read_offset[tp] == 8


async def test_headers_reach_the_handler_as_a_mapping() -> None:
    handler = _Handler()
    _, consumer, agent = await _app(handler)
    tp = TP(TOPIC, 0)
    _fetch(consumer, {tp: [_record(TOPIC, 0, 0, [("traceparent", b"00-ab")]), _record(TOPIC, 0, 1)]})
    await _getmany(consumer)
    task = await _running(agent)
    await _until(lambda: bool(handler.batches))
    await _stop(task)
    assert [r.headers for r in handler.batches[0]] == [{"traceparent": b"00-ab"}, {}]


async def test_batches_hold_at_most_max_in_order_and_a_short_one_waits_only_within() -> None:
    handler = _Handler()
    _, consumer, agent = await _app(handler, max_=4, within=0.05)
    tp = TP(TOPIC, 0)
    task = await _running(agent)
    agent.put(tp, _records(TOPIC, 0, range(0, 3)))
    agent.put(tp, _records(TOPIC, 0, range(3, 10)))
    await _until(lambda: sum(len(b) for b in handler.batches) == 10)
    assert [len(b) for b in handler.batches] == [4, 4, 2]
    assert handler.offsets(0) == list(range(10))
    # A lone record waits for company at most ``within``, then goes alone.
    started = asyncio.get_running_loop().time()
    agent.put(tp, _records(TOPIC, 0, range(10, 11)))
    await _until(lambda: len(handler.batches) == 4)
    waited = asyncio.get_running_loop().time() - started
    await _stop(task)
    assert 0.04 <= waited < 1.0
    assert consumer._acked[tp] == list(range(11))


async def test_the_batch_in_hand_is_waited_for_by_wait_empty_and_acked_after_the_handler() -> None:
    gate = asyncio.Event()
    handler = _Handler(gate)
    _, consumer, agent = await _app(handler, within=0)
    tp = TP(TOPIC, 0)
    task = await _running(agent)
    agent.put(tp, _records(TOPIC, 0, range(3)))
    await asyncio.wait_for(handler.entered.wait(), 5)
    assert len(consumer._unacked_messages) == 1
    assert consumer._acked[tp] == []
    commits: list[list[int]] = []

    async def commit(*_: Any, **__: Any) -> bool:
        commits.append(list(consumer._acked[tp]))
        return True

    consumer.commit = consumer.commit_and_end_transactions = commit
    # A revocation waits for streams to finish what they hold before it commits.
    waiting = asyncio.ensure_future(consumer.wait_empty())
    await asyncio.sleep(0.2)
    assert not waiting.done()
    gate.set()
    await asyncio.wait_for(waiting, 5)
    assert consumer._acked[tp] == [0, 1, 2]
    assert not consumer._unacked_messages
    assert commits[-1] == [0, 1, 2]  # its last commit holds the batch
    await _stop(task)


async def test_a_revocation_drops_what_is_queued() -> None:
    gate = asyncio.Event()
    handler = _Handler(gate)
    app, consumer, agent = await _app(handler, max_=2, within=0)
    tp = TP(TOPIC, 0)
    task = await _running(agent)
    agent.put(tp, _records(TOPIC, 0, range(6)))
    await asyncio.wait_for(handler.entered.wait(), 5)
    # What the app's revocation does: the flow's queues are cleared, the batch in hand finishes.
    app.flow_control.clear()
    assert agent._queued == 0
    gate.set()
    await _until(lambda: consumer._acked[tp] == [0, 1])
    await asyncio.sleep(0.05)
    await _stop(task)
    assert handler.offsets(0) == [0, 1]
    assert consumer._new_offset(tp) == 2  # the dropped ones are fetched again from here


async def test_a_handler_that_raises_acks_nothing_and_crashes_the_app() -> None:
    handler = _Handler(fail=True)
    app, consumer, agent = await _app(handler, within=0)
    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    app.crash = crash
    tp = TP(TOPIC, 0)
    task = await _running(agent)
    agent.put(tp, _records(TOPIC, 0, range(3)))
    await asyncio.wait_for(task, 5)
    assert [str(e) for e in crashed] == ["boom"]
    assert consumer._acked[tp] == []
    assert not consumer._unacked_messages


async def _fetch_into_a_full_queue(
    handler: _Handler, queued: int
) -> tuple[Any, BatchAgent, asyncio.Future[Any]]:
    """An agent (not running) whose queue is full with offsets 0..queued-1, and a fetch of the
    next two records under way."""
    _, consumer, agent = await _app(handler, max_=2, within=0)
    agent._max_queued = queued
    tp = TP(TOPIC, 0)
    agent.put(tp, _records(TOPIC, 0, range(queued)))
    assert agent.full
    consumer._read_offset[tp] = queued - 1
    _fetch(consumer, {tp: _records(TOPIC, 0, range(queued, queued + 2))})
    fetching = asyncio.ensure_future(_getmany(consumer))
    await asyncio.sleep(0.1)
    assert not fetching.done() and agent._queued == queued
    return consumer, agent, fetching


async def test_a_full_queue_holds_the_fetch_until_there_is_room() -> None:
    handler = _Handler()
    _, agent, fetching = await _fetch_into_a_full_queue(handler, 4)
    task = await _running(agent)
    await asyncio.wait_for(fetching, 5)
    await _until(lambda: handler.offsets(0) == list(range(6)))
    await _stop(task)


async def test_a_suspended_flow_ends_the_wait_for_room_and_the_fetch_is_dropped() -> None:
    consumer, agent, fetching = await _fetch_into_a_full_queue(_Handler(), 2)
    # A revocation: the flow stops and ``suspend_flow`` is set.
    consumer.stop_flow()
    assert await asyncio.wait_for(fetching, 5) == []
    assert agent._queued == 2
    assert consumer._read_offset[TP(TOPIC, 0)] == 1  # not past what was never queued


async def test_a_fetch_while_the_flow_is_stopped_is_not_handed_on() -> None:
    handler = _Handler()
    _, consumer, agent = await _app(handler)
    tp = TP(TOPIC, 0)
    sought: list[bool] = []

    async def perform_seek() -> None:
        sought.append(True)

    consumer.perform_seek = perform_seek
    consumer.flow_active = False
    _fetch(consumer, {tp: _records(TOPIC, 0, range(3))})
    assert await _getmany(consumer) == []
    assert agent._queued == 0 and sought == [True]


async def test_a_second_agent_on_one_topic_is_refused() -> None:
    _, _, _ = app_parts = await _app(_Handler())
    app = app_parts[0]
    with pytest.raises(ValueError, match="already has an agent"):
        app.batch_agent(app.topic(TOPIC), _Handler(), name="again", max_=1, within=0)


async def test_an_app_that_starts_again_keeps_one_run_loop_per_agent() -> None:
    app, _, agent = await _app(_Handler())
    await app.on_start()
    await asyncio.sleep(0)
    first = agent.task
    assert first is not None and not first.done()
    await app.on_start()
    assert agent.task is first  # two loops on one queue would break the order
    first.cancel()
    await asyncio.wait([first])  # (mode's task wrapper swallows the cancellation)
    await app.on_start()
    await asyncio.sleep(0)
    again = agent.task
    assert again is not first and again is not None and not again.done()
    again.cancel()
    await asyncio.wait([again])
