"""Faust's aiokafka consumer in the agents' own event loop, not in a thread of its own.

Faust's aiokafka driver (faust-streaming 0.15.3, ``faust/transport/drivers/aiokafka.py``)
runs the ``AIOKafkaConsumer`` in ``AIOKafkaConsumerThread``, a mode ``QueueServiceThread``:
a thread with a second event loop. Every ``getmany``, commit, position or highwaters call
of the agents' loop goes through mode's ``MethodQueue`` (``call_soon_threadsafe`` there, a
queue worker task, ``call_soon_threadsafe`` back with the result), and the rebalance
callbacks cross back the same way (``threadsafe_partitions_revoked/assigned``). Both loops
wake for every fetch; a thread keepalive wakes both every second besides. In the deliver
worker at 200 msgs/s that was most of its CPU (docs/benchmarks.md, issue #19).

``InLoop`` goes first in a consumer thread class's bases and turns it into a plain mode
``Service`` in the loop it is given (the consumer's, i.e. the agents'): ``start``/``stop``
are ``Service``'s (no thread, no second loop, no keepalive timers), ``call_thread`` awaits
the method in the caller's task, and the rebalance listener's callbacks await the consumer's
``on_partitions_revoked``/``on_partitions_assigned`` directly. Everything else is the
thread class's own code, unchanged: the consumer it builds, the rebalance listener (and its
``app.on_rebalance_start()`` before the revocation), ``_commit``, ``_seek_wait``,
``_fetch_records`` (the flow check before a fetch), highwaters, ``verify_event_path``.
What ran in the thread's loop now runs in the agents' loop; nothing in that code blocks (it
awaits aiokafka throughout; ``close()`` schedules aiokafka's closes on ``app.loop``, which
now is the same loop). The other way round, the agents' loop now also carries aiokafka's
heartbeat and fetch tasks: a synchronous stretch in an agent longer than the session timeout
would drop the worker from its group (the slow work of the workers, search's shards, the
media workers' images, runs in executors already).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from faust.types import TP
from mode import Service
from mode.threads import ServiceThread
from mode.utils.futures import maybe_async
from mode.utils.locks import Event

# ServiceThread's one-second timer task (it keeps the thread's loop scheduling); no thread here.
_THREAD_KEEPALIVE = vars(ServiceThread)["_thread_keepalive"]


class InLoop(Service):
    """First base of a ``faust.transport.consumer.ConsumerThread`` subclass: the same class,
    run as a plain ``Service`` in the given loop (see the module's docstring)."""

    # ServiceThread waits for its thread to signal shutdown; a plain service has nothing to wait.
    wait_for_shutdown = False

    consumer: Any
    transport: Any
    app: Any
    parent_loop: asyncio.AbstractEventLoop
    thread_loop: asyncio.AbstractEventLoop

    def __init__(
        self, consumer: Any, *, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any
    ) -> None:
        # ConsumerThread.__init__ without ServiceThread.__init__ (which makes a new loop).
        self.consumer = consumer
        self.transport = consumer.transport
        self.app = self.transport.app
        own = loop or consumer.loop
        # Both names the thread classes use for "the consumer's loop" and "the agents' loop".
        self.parent_loop = self.thread_loop = own
        Service.__init__(self, loop=own, **kwargs)

    def _new_shutdown_event(self) -> Event:
        return Service._new_shutdown_event(self)

    def _get_tasks(self) -> Iterable[Any]:
        return [task for task in Service._get_tasks(self) if task is not _THREAD_KEEPALIVE]

    async def start(self) -> None:
        await Service.start(self)

    async def maybe_start(self) -> bool:
        return await Service.maybe_start(self)

    async def stop(self) -> None:
        await Service.stop(self)

    async def on_stop(self) -> None:
        # What the thread did when its loop stopped: the thread class's own on_thread_stop, after
        # InLoop in the MRO (AIOKafkaConsumerThread: stop the aiokafka consumer).
        await cast(Any, self).on_thread_stop()

    async def crash(self, reason: BaseException) -> None:
        await Service.crash(self, reason)

    def _stopped_set(self) -> None:
        Service._stopped_set(self)

    def set_shutdown(self) -> None:
        Service.set_shutdown(self)

    async def _stop_children(self) -> None:
        await Service._stop_children(self)

    async def _stop_futures(self) -> None:
        await Service._stop_futures(self)

    async def _stop_exit_stacks(self) -> None:
        await Service._stop_exit_stacks(self)

    async def call_thread(self, fun: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        # MethodQueue runs ``maybe_async(method(*args, **kwargs))`` (some are plain functions,
        # aiokafka's subscribe); here the caller's task runs it.
        return await maybe_async(fun(*args, **kwargs))

    async def cast_thread(self, fun: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> None:
        self.add_future(maybe_async(fun(*args, **kwargs)))

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await self.consumer.on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        await self.consumer.on_partitions_assigned(assigned, generation_id)
