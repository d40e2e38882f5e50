"""``EventLog`` on Kafka: an aiokafka producer with acks=all and idempotence."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner, murmur2

from events import (
    ChatEvent,
    Topics,
    encode_event,
    partition_key,
)
from events.errors import Unavailable
from events.topics import route

log = logging.getLogger(__name__)

# topic -> a span around one append, yielding the record headers that carry its trace context
TraceAppend = Callable[[str], AbstractContextManager[list[tuple[str, bytes]]]]


class KafkaEventLog:
    """Appends events; renews its producer when appends keep failing.

    An idempotent aiokafka producer can wedge after a broker outage: batches that failed leave a
    gap in its sequence numbers, and the broker refuses every later batch of that producer id
    with ``OutOfOrderSequenceNumber``, for ever (the fault suite found it: no send succeeded
    after Kafka came back). So when appends have failed for ``renew_after_s`` (5 s) without
    one success, the log starts a fresh producer (a new producer id) and retires the old one.
    Nothing is acknowledged by a failed append, so clients retry with the same
    ``client_msg_id``; the idempotency record makes the retry append the same event.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topics: Topics,
        *,
        trace: TraceAppend | None = None,
        renew: Callable[[], Awaitable[AIOKafkaProducer]] | None = None,
        renew_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._producer = producer
        self._topics = topics
        self._trace = trace
        self._renew = renew
        self._renew_after_s = renew_after_s
        self._clock = clock
        self._last_ok = self._renewed_at = clock()
        self._renewing = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def current(self) -> AIOKafkaProducer:
        return self._producer

    async def close(self) -> None:
        await self._producer.stop()
        if self._retiring:
            await asyncio.wait(list(self._retiring), timeout=5)

    @classmethod
    def producer(
        cls, bootstrap: str, *, linger_ms: int, request_timeout_ms: int = 10_000
    ) -> AIOKafkaProducer:
        """The producer every appender uses: durable (acks=all, idempotent), briefly batched."""
        return AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            request_timeout_ms=request_timeout_ms,
            client_id="tidings-gateway",
            partitioner=remembered_partitioner,
        )

    async def append(self, event: ChatEvent) -> None:
        topic, key = route(self._topics, event)
        producer = self._producer
        try:
            if self._trace is None:
                await producer.send_and_wait(topic, value=encode_event(event), key=partition_key(key))
            else:
                with self._trace(topic) as headers:
                    await producer.send_and_wait(
                        topic, value=encode_event(event), key=partition_key(key), headers=headers
                    )
        except KafkaError as exc:
            await self._maybe_renew(producer)
            raise Unavailable("the event log did not confirm the write") from exc
        self._last_ok = self._clock()

    async def _maybe_renew(self, failed: AIOKafkaProducer) -> None:
        now = self._clock()
        if (
            self._renew is None
            or failed is not self._producer
            or now - self._last_ok < self._renew_after_s
            or now - self._renewed_at < self._renew_after_s
        ):
            return
        async with self._renewing:
            if failed is not self._producer:
                return  # another append renewed it meanwhile
            self._renewed_at = now
            try:
                fresh = await self._renew()
            except Exception as exc:  # noqa: BLE001 - Kafka still down: try again later
                log.warning("could not start a new Kafka producer (%r); keeping the old one", exc)
                return
            log.warning("appends failed for %.0fs: replaced the Kafka producer", now - self._last_ok)
            self._producer = fresh
            self._last_ok = self._clock()
            task = asyncio.create_task(_retire(failed))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)


@functools.lru_cache(maxsize=65_536)
def _partition_index(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def remembered_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's default partitioner (murmur2 of the key, as Kafka's Java client), each key's
    result remembered: murmur2 in pure Python costs about 9 µs a send, and a gateway appends
    for the same conversations over and over. The same partition for every key."""
    if key is None:
        return int(DefaultPartitioner()(key, all_partitions, available))
    return all_partitions[_partition_index(key, len(all_partitions))]


async def _retire(producer: AIOKafkaProducer) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), timeout=10)
