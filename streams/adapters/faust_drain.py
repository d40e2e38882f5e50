"""Faust's fetch loop without four tasks per record.

Faust's ``Consumer._drain_messages`` (faust/transport/consumer.py, faust-streaming 0.15.3)
hands every record to the conductor with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: mode's
``Service.wait_first`` makes four tasks (the callback, the flow event, the service's
``stopped`` and ``crashed`` events), an ``asyncio.wait(FIRST_COMPLETED)`` and three
cancellations, 24 µs of CPU per record on this box, in every consumer group
(docs/benchmarks.md, issue #19). The race is there for a callback that blocks: the conductor's
``on_message`` waits while flow control is suspended (a rebalance), while the producer's
buffer is full, or while a stream's buffer is full; ``suspend_flow`` (set with the flow
control on rebalance and at stop) must then cancel it so that the drain gets on.

Almost every callback returns without blocking. So here the callback is started in the
drain's own task, run up to its first suspension (as Python 3.12's eager tasks do); when it
returns there, no task is made. Only a callback that suspends is wrapped in a task and raced
against ``suspend_flow``, ``stopped`` and ``crashed`` exactly as Faust does. A record that
arrives while ``suspend_flow`` is set is not handed to the callback at all (in Faust's loop
its callback met the suspended flow control at once and was cancelled), and its read offset
is set as Faust sets it. The rest of the loop is Faust's, line for line.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import Message
from mode import Service, ServiceT


class _Started(Awaitable[Any]):
    """The rest of a coroutine that has run up to its first suspension in another task.

    Awaited (or wrapped in a task), it hands the value the coroutine yielded (the future it
    waits on) to the awaiting task, and from then on passes every value and exception between
    that task and the coroutine, as ``yield from`` does for a coroutine not yet started."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._yielded
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - thrown on into the coroutine (a cancellation)
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def deliver(consumer: Any, callback: Callable[[Message], Awaitable[None]], message: Message) -> None:
    """Faust's ``await consumer.wait_first(callback(message), consumer.suspend_flow.wait())``,
    without a task unless the callback suspends."""
    if consumer.suspend_flow.is_set():
        return
    coro = cast(Coroutine[Any, Any, Any], callback(message))
    try:
        yielded = coro.send(None)
    except StopIteration:
        return  # done without waiting: the usual case
    await consumer.wait_first(_Started(coro, yielded), consumer.suspend_flow.wait())


class Consumer(faust_aiokafka.Consumer):
    async def _drain_messages(self, fetcher: ServiceT) -> None:  # noqa: C901 - Faust's loop as it is
        # Faust 0.15.3's loop; the one change is ``deliver`` for ``wait_first``.
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = cast(AsyncIterator[Any], getmany(timeout=1.0))

                # Sleeping because sometimes getmany is called in a loop
                # never releasing to the event loop
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            # We have a gap in income messages
                            if gap > 1 and r_offset:
                                acks_enabled = acks_enabled_for(message.topic)
                                if acks_enabled:
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            await deliver(self, callback, message)
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev(
                                "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                                offset,
                                message.key,
                                message.value,
                            )
                    unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)
