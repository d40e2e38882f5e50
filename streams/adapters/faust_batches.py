"""A topic that one agent reads, handed to it a fetch at a time, past Faust's path per record.

Faust (faust-streaming 0.15.3) moves every record on by itself: the drain makes a ``Message``;
the conductor awaits the flow control and the producer's ebb and decodes it into an ``Event``
on the agent's queue; the stream's iterator takes it, makes it the current event, and calls the
sensors and the processors (``take_events``' buffer); each event is acked alone. In a consumer
group that gathers its fetches that is ~60 µs of CPU per event, two thirds of the consumer
(docs/benchmarks.md, issue #19, sessions 13 and 14).

Here ``Consumer.getmany`` takes each fetch's records of such a topic out, one piece per
partition, before Faust makes messages of the rest (a topic of several agents, such as the
media topic, stays on Faust's path). For each piece it keeps Faust's per-record bookkeeping
(the read offset, gaps, ``commit_every``), then queues it for the topic's ``BatchAgent``. The
agent takes up to ``max_`` records, waiting at most ``within`` after the first for more (as
``take_events``). It hands them to its handler as ``Record``s and then acks their offsets
together, into the same ``_acked`` lists that Faust's commit reads.

What Faust's path guaranteed, and how it is kept:

- **Order per partition:** one task per agent, and the queue is first in, first out.
- **An offset is committed only after its batch was handled.** The acks come after the
  handler returns. If the handler raises, nothing is acked and the app crashes: the records
  come again from the committed offset.
- **A rebalance.**
  - The agent's queue is managed by the app's flow control, so the revocation's
    ``flow_control.clear()`` drops what was queued. It is fetched again from the committed
    offset, by whoever owns the partition next.
  - A batch inside the handler is one entry of the consumer's ``_unacked_messages``, so
    ``wait_empty`` waits for it before the revocation commits. The search role's shard
    release relies on this.
- **Back-pressure:** while the queue holds ``max_queued`` records, the drain waits. A
  suspended flow (a rebalance, a stop) ends the wait, as with a full stream buffer in Faust's
  conductor.
- **The stuck-stream check:** a batch sets the Monitor's ``stream_inbound_time`` for its
  partitions when it is taken. That is what Faust's ``verify_event_path`` reads.

Not kept: the Monitor's per-event counters and per-message sensor calls (no Faust web view
reads them here), and Faust ``Event``s (the handler gets ``Record``s).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from time import monotonic
from typing import Any, cast

import faust
from faust.types import TP, Message
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from streams.projector import Record

log = logging.getLogger(__name__)

Handle = Callable[[Sequence[Record]], Awaitable[None]]
Piece = tuple[TP, list[Any]]  # a partition's records of one fetch (aiokafka ConsumerRecords)


class _InFlight:
    """A batch in the handler, as one entry of the consumer's ``_unacked_messages`` (a WeakSet
    whose entries ``wait_empty`` and its log read ``acked`` and ``refcount`` of)."""

    __slots__ = ("__weakref__", "acked", "refcount", "size")

    def __init__(self, size: int) -> None:
        self.acked = False
        self.refcount = 1
        self.size = size

    def __repr__(self) -> str:
        return f"<batch of {self.size} records>"


class BatchAgent:
    """The one reader of a topic: takes its queued pieces in batches and hands them on."""

    def __init__(
        self,
        app: faust.App,
        source: faust.TopicT,
        name: str,
        handle: Handle,
        *,
        max_: int,
        within: float,
        max_queued: int = 4096,
    ) -> None:
        self.source = source
        self.name = name
        self._app = app
        self._handle = handle
        self._max = max_
        self._within = within
        self._max_queued = max(max_queued, max_)
        self._pieces: deque[Piece] = deque()
        self._queued = 0
        # (future, how many records wake it): the run loop's one waiter, woken by put.
        self._waiter: tuple[asyncio.Future[None], int] | None = None
        self._room: asyncio.Future[None] | None = None
        self.task: asyncio.Future[None] | None = None  # its run loop, while the app runs
        # Cleared with the app's other queues when a revocation suspends the flow.
        app.flow_control.manage_queue(cast(Any, self))

    @property
    def full(self) -> bool:
        return self._queued >= self._max_queued

    def put(self, tp: TP, records: list[Any]) -> None:
        self._pieces.append((tp, records))
        self._queued += len(records)
        waiter = self._waiter
        if waiter is not None and self._queued >= waiter[1] and not waiter[0].done():
            waiter[0].set_result(None)

    async def wait_for_room(self) -> None:
        # A wait given up (the flow suspended first) cancels its future; the next makes another.
        while self.full:
            if self._room is None or self._room.done():
                self._room = asyncio.get_running_loop().create_future()
            await self._room

    def clear(self) -> None:
        self._pieces.clear()
        self._queued = 0
        self._made_room()

    def _made_room(self) -> None:
        if self._room is not None and not self._room.done() and not self.full:
            self._room.set_result(None)

    async def _until_queued(self, enough: int, at_most_s: float | None) -> None:
        if self._queued >= enough:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiter = (future, enough)
        timer = loop.call_later(at_most_s, _done, future) if at_most_s else None
        try:
            await future
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _take(self) -> list[Piece]:
        """Up to ``max_`` records from the front of the queue (a piece may be split)."""
        taken: list[Piece] = []
        room = self._max
        while self._pieces and room:
            tp, records = self._pieces[0]
            if len(records) <= room:
                self._pieces.popleft()
                taken.append((tp, records))
                room -= len(records)
            else:
                taken.append((tp, records[:room]))
                self._pieces[0] = (tp, records[room:])
                room = 0
        self._queued -= self._max - room
        self._made_room()
        return taken

    async def run(self) -> None:
        try:
            while True:
                await self._until_queued(1, None)
                if self._within:
                    await self._until_queued(self._max, self._within)
                pieces = self._take()
                if pieces:
                    await self._handle_batch(pieces)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Nothing of the batch was acked: it comes again from the committed offset.
            log.exception("agent %s crashed: %r", self.name, exc)
            await self._app.crash(exc)

    async def _handle_batch(self, pieces: list[Piece]) -> None:
        app = self._app
        consumer = app.consumer
        batch = [
            Record(r.topic, r.partition, r.offset, r.key, r.value, dict(r.headers) if r.headers else {})
            for _, records in pieces
            for r in records
        ]
        in_flight = _InFlight(len(batch))
        unacked = cast(Any, consumer)._unacked_messages
        unacked.add(in_flight)
        inbound = app.monitor.stream_inbound_time
        now = monotonic()
        for tp, _ in pieces:
            inbound[tp] = now
        try:
            await self._handle(batch)
            ack(consumer, pieces)
        finally:
            unacked.discard(in_flight)


def _done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def ack(consumer: Any, pieces: Sequence[Piece]) -> None:
    """``Consumer.ack`` for every record of the pieces, under Faust's lock once."""
    acks_enabled_for = consumer.app.topics.acks_enabled_for
    added = 0
    with ack_lock:
        for tp, records in pieces:
            if not acks_enabled_for(tp.topic):
                continue
            committed = consumer._committed_offset[tp]
            acked_index = consumer._acked_index[tp]
            acked = consumer._acked[tp]
            for record in records:
                offset = record.offset
                if (committed is None or offset >= committed) and offset not in acked_index:
                    acked_index.add(offset)
                    acked.append(offset)
                    added += 1
        consumer._n_acked += added
    notify(consumer._waiting_for_ack)


class App(faust.App):
    """A ``faust.App`` whose ``batch_agent``s read their topics past Faust's per-record path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_agents: dict[str, BatchAgent] = {}

    def batch_agent(
        self, source: faust.TopicT, handle: Handle, *, name: str, max_: int, within: float
    ) -> None:
        """``handle`` gets every record of ``source`` (one topic), in batches of at most
        ``max_`` gathered for at most ``within`` seconds after the first."""
        (topic,) = source.topics
        if topic in self.batch_agents:
            raise ValueError(f"{topic} already has an agent")
        self.batch_agents[topic] = BatchAgent(self, source, name, handle, max_=max_, within=within)

    async def on_start(self) -> None:
        await super().on_start()
        # As an agent's stream does when it starts (``Topic.__aiter__``): the conductor
        # subscribes the consumer to the topics it holds, once the agents have started.
        for agent in self.batch_agents.values():
            self.topics.add(agent.source)
            # One run loop per agent, also when the app starts again: two would break the order.
            if agent.task is None or agent.task.done():
                agent.task = self.add_future(agent.run())


class Consumer:
    """Goes first in the bases of a Faust consumer: its ``getmany`` hands the pieces of the
    app's batch agents' topics on, and yields the rest record by record as Faust's does."""

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:  # noqa: ASYNC109 - Faust's
        this = cast(Any, self)
        records, active_partitions = await this._wait_next_records(timeout)
        generation_id = this.app.consumer_generation_id
        if records is None or this.should_stop:
            return
        if not this.flow_active:
            # Faust's: fetched while the flow was stopped (a rebalance), seek back.
            this.log.dev("getmany called while flow not active. Seek back to committed offsets.")
            try:
                await this.perform_seek()
            except Exception as ex:  # noqa: BLE001 - Faust's own handling, as it is
                this.log.warning(f"exception performing seek when flow not active {ex}")
            return
        agents: Mapping[str, BatchAgent] = getattr(this.app, "batch_agents", {})
        mine: dict[TP, list[Any]] = {}
        rest: dict[TP, list[Any]] = {}
        for tp, piece in records.items():
            (mine if tp.topic in agents else rest)[tp] = piece
        if mine and not await self._hand_on(mine, agents, active_partitions, generation_id):
            return
        if not rest:
            return
        # Faust's getmany for the other topics, as it is.
        records_it = this.scheduler.iterate(rest)
        to_message = this._to_message
        for tp, record in records_it:
            if not this.flow_active:
                break
            if this.app.consumer_generation_id != generation_id:
                break
            if active_partitions is None or tp in active_partitions or tp in this._buffered_partitions:
                this.app.monitor.track_tp_end_offset(tp, this.highwater(tp))
                yield tp, to_message(tp, record)

    async def _hand_on(
        self,
        records: Mapping[TP, list[Any]],
        agents: Mapping[str, BatchAgent],
        active_partitions: set[TP] | None,
        generation_id: int,
    ) -> bool:
        """Queue each piece (all of the agents' topics) for its agent; False when the flow
        stopped or the generation changed meanwhile (the rest of the fetch is dropped then, as
        Faust's getmany does)."""
        this = cast(Any, self)
        read_offset = this._read_offset
        acks_enabled_for = this.app.topics.acks_enabled_for
        for tp, piece in records.items():
            agent = agents[tp.topic]
            if not this.flow_active or this.app.consumer_generation_id != generation_id:
                return False
            if not (active_partitions is None or tp in active_partitions or tp in this._buffered_partitions):
                continue
            this.app.monitor.track_tp_end_offset(tp, this.highwater(tp))
            # The drain's checks per record (faust_drain.Consumer._drain_messages).
            r_offset = read_offset[tp]
            fresh = []
            for record in piece:
                offset = record.offset
                if r_offset is None or offset >= r_offset:
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(tp.topic):
                        await this._add_gap(tp, r_offset + 1, offset)
                    fresh.append(record)
                    r_offset = offset
            commit_every = this._commit_every
            if commit_every is not None and this._n_acked >= commit_every:
                this._n_acked = 0
                await this.commit()
            if not fresh:
                continue
            if agent.full:
                await this.wait_first(agent.wait_for_room(), this.suspend_flow.wait())
                if not this.flow_active or this.app.consumer_generation_id != generation_id:
                    return False
            agent.put(tp, fresh)
            read_offset[tp] = r_offset
        return True
