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

The delivery group keeps Faust's sizing: its fetch returns as soon as a message is there.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.adapters import faust_drain

# Far more than arrives in one fetch wait: the wait, not the size, ends a fetch.
FETCH_MIN_BYTES = 4 * 1024 * 1024


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "fetch_wait_ms", 0)
        if wait_ms > 0:
            # Read by AIOKafkaConsumer.start() when it builds its Fetcher; set before start.
            consumer._fetch_min_bytes = FETCH_MIN_BYTES
            consumer._fetch_max_wait_ms = wait_ms
        return consumer


class _Consumer(faust_drain.Consumer):
    """Also drains without a task per record (``streams.adapters.faust_drain``)."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class App(faust.App):
    """A ``faust.App`` whose consumer fetches for up to ``fetch_wait_ms`` (0: Faust's own)."""

    fetch_wait_ms: int = 0

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
