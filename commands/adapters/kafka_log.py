"""``EventLog`` on Kafka: an aiokafka producer with acks=all and idempotence."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

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
        """The producer every appender uses: durable (acks=all, idempotent), batched under load
        (``LingeringProducer``: a linger of ``linger_ms`` only while other sends are in flight)."""
        return LingeringProducer(
            linger_ms,
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
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


class LingeringProducer(AIOKafkaProducer):
    """aiokafka's producer with a linger that follows the send rate.

    A send that finds no other send of this producer in flight goes at once, so a trickle of
    sends waits for no timer; one that comes while others are in flight waits, with those that
    come after it, until ``linger_ms`` after the first of them, and then they all go on in the
    order they came, in one loop turn, so they share a produce request. aiokafka's own linger
    (0 here) is fixed: at 2 ms every send of a trickle waited 2 ms and a timer, and at 0 a busy
    gateway sent a request for every record or two (issue #19, docs/benchmarks.md session 10).
    Nothing else changes: acks and idempotence are the producer's, and a send still returns
    once the broker confirmed it.
    """

    def __init__(self, linger_ms: int, **config: Any) -> None:
        super().__init__(linger_ms=0, **config)
        self.linger_s = linger_ms / 1000
        self._sends_in_flight = 0  # let through and not yet confirmed or failed
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._gate: asyncio.TimerHandle | None = None

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any:
        if self.linger_s > 0 and (self._sends_in_flight or self._waiting):
            await self._wait_for_gate()  # counted in flight by the gate when it lets it go
        else:
            self._sends_in_flight += 1
        try:
            return await super().send_and_wait(topic, value, key, partition, timestamp_ms, headers)
        finally:
            self._sends_in_flight -= 1

    async def _wait_for_gate(self) -> None:
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._waiting.append(turn)
        if self._gate is None:
            self._gate = loop.call_later(self.linger_s, self._open_gate)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._sends_in_flight -= 1  # let go, then cancelled before it went on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(turn)
            raise

    def _open_gate(self) -> None:
        """Let every waiting send go, in the order they came: their tasks resume in this order
        in the next loop turn, before the sender task drains the batches they add. They count
        as in flight from now on, so a send that comes meanwhile waits for the next gate."""
        self._gate = None
        waiting, self._waiting = self._waiting, collections.deque()
        for turn in waiting:
            if not turn.done():
                turn.set_result(None)
                self._sends_in_flight += 1


# aiokafka's partitioner for records without a key (a random available partition); stateless,
# so one for the process rather than one per call.
_UNKEYED = DefaultPartitioner()


@functools.lru_cache(maxsize=65_536)
def _partition_index(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def remembered_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's default partitioner (murmur2 of the key, as Kafka's Java client), each key's
    result remembered: murmur2 in pure Python costs about 9 µs a send, and a gateway appends
    for the same conversations over and over. The same partition for every key."""
    if key is None:
        return int(_UNKEYED(key, all_partitions, available))
    return all_partitions[_partition_index(key, len(all_partitions))]


async def _retire(producer: AIOKafkaProducer) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), timeout=10)
