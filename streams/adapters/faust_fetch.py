"""Faust's aiokafka consumer with the fetch sizing of a background consumer group.

Faust builds its ``AIOKafkaConsumer`` with ``fetch_min_bytes`` left at 1 (and
``fetch_max_wait_ms=1500`` hard-coded, ``faust/transport/drivers/aiokafka.py``
``_create_worker_consumer``): the broker answers a fetch as soon as one record is there, so at a
few hundred messages a second every consumer group fetches once or twice per message, and
each fetch wakes the broker, aiokafka's thread, Faust's cross-thread ``getmany`` and the agent
for one or two events (docs/benchmarks.md, "issue #19"). A group nobody waits on (persist,
search, notify) can let the broker hold the fetch until ``wait_ms`` has passed or
``FETCH_MIN_BYTES`` have gathered: fetches and batches per second then stay near
1000 / ``wait_ms`` whatever the rate, and each batch carries more events.

While a group is idle such a fetch still ends every ``wait_ms`` (20 empty fetches a second per
group at 50 ms: the largest part of an idle broker's CPU, docs/benchmarks.md "servers"), so
after a fetch that brought nothing the next one waits up to ``IDLE_WAIT_MS`` but returns at the
first record; the fetch after a record gathers again. Idle, a group fetches under once a
second; the first event after a pause is fetched at once instead of up to ``wait_ms`` later;
under load (every fetch brings events) nothing changes. At a trickle (a message every 50 ms
or more) a fetch comes back per message, as with Faust's own sizing.

The delivery group keeps Faust's sizing: its fetch returns as soon as a message is there.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from aiokafka.consumer.fetcher import Fetcher
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.adapters import faust_drain, faust_sameloop

# Far more than arrives in one fetch wait: the wait, not the size, ends a fetch.
FETCH_MIN_BYTES = 4 * 1024 * 1024
# An idle group's fetch: held by the broker this long unless a record comes (Faust's own wait).
IDLE_WAIT_MS = 1500


class IdleAwareFetcher(Fetcher):
    """aiokafka's ``Fetcher`` whose next fetch gathers (``FETCH_MIN_BYTES``, ``batch_wait_ms``)
    after one that brought records, and answers at the first record (1 byte,
    ``IDLE_WAIT_MS``) after one that brought nothing. Each fetch request is built from
    ``_fetch_min_bytes`` and ``_fetch_max_wait_ms`` when it is sent
    (``Fetcher._get_actions_per_node``), and a partition is fetched again only once the
    previous fetch's records were handed on, so the setting always follows the last answer."""

    batch_wait_ms: int

    async def _proc_fetch_request(self, assignment: Any, node_id: int, request: Any) -> bool:
        brought = bool(await super()._proc_fetch_request(assignment, node_id, request))
        # True also for an error handed to the consumer; the next fetch then gathers, as before.
        self._fetch_min_bytes = FETCH_MIN_BYTES if brought else 1
        self._fetch_max_wait_ms = self.batch_wait_ms if brought else IDLE_WAIT_MS
        return brought


class _BackgroundConsumer(aiokafka.AIOKafkaConsumer):
    """The consumer of a group nobody waits on: its ``Fetcher`` is an ``IdleAwareFetcher``."""

    async def start(self) -> None:
        await super().start()
        # start() builds the Fetcher (aiokafka.consumer.consumer); its fetch loop looks up
        # _proc_fetch_request per fetch, so the subclass takes over from the next one.
        fetcher = self._fetcher
        fetcher.__class__ = IdleAwareFetcher
        fetcher.batch_wait_ms = self._fetch_max_wait_ms


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "fetch_wait_ms", 0)
        if wait_ms > 0:
            # Read by AIOKafkaConsumer.start() when it builds its Fetcher; set before start.
            consumer._fetch_min_bytes = FETCH_MIN_BYTES
            consumer._fetch_max_wait_ms = wait_ms
            consumer.__class__ = _BackgroundConsumer
        return consumer


class _SameLoopConsumer(faust_sameloop.InLoop, _ConsumerThread):
    """The same consumer, run in the agents' loop (``streams.adapters.faust_sameloop``)."""


class _Consumer(faust_drain.Consumer):
    """Also drains without a task per record (``streams.adapters.faust_drain``), and runs its
    aiokafka consumer in the agents' loop unless the app's ``consumer_in_loop`` is False."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        if getattr(self.app, "consumer_in_loop", True):
            return _SameLoopConsumer(self, loop=self.loop, beacon=self.beacon)
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class App(faust.App):
    """A ``faust.App`` whose consumer fetches for up to ``fetch_wait_ms`` (0: Faust's own), in
    the agents' loop (``consumer_in_loop``; False: in Faust's consumer thread, as before)."""

    fetch_wait_ms: int = 0
    # Read when the app builds its consumer (app.consumer, first used at start); set it on the
    # class or the app before that. Kept for comparing the two (tests, bench), not a setting.
    consumer_in_loop: bool = True

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
