"""The sender: coalesces notification jobs per device and delivers them, never losing one.

It reads the notifications topic with its own aiokafka consumer, not a Faust agent, because it
holds jobs for a while (the coalescing window, a retry's wait) and must not let the group's
offset pass a job before that job is delivered or handed on durably. Faust acks an event as
soon as the agent asks for the next one; here the offset committed per partition is the lowest
offset still held (or the next one to read when none is), every second and on revocation. A
crash re-reads from there: the windows are opened again by the same jobs, so the ids are the
same, and jobs already delivered are skipped by the device's sent log in Redis.

A failed delivery is appended again to the notifications topic as a ``retry`` record with its
attempt count and not-before time (durable, unlike an in-memory retry), then let go; after the
retry budget it goes to the dead-letter topic. Deliveries run as tasks: a receiver that hangs
holds only its own notification (up to the timeout), never other devices'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from commands.ports import EventLog
from commands.push import PushSettingsWriter
from events import PushUnregistered, Topics, partition_key
from events.errors import Unavailable
from projections.push import Registration
from streams.adapters.metrics import mark_ready, mark_rebalancing
from streams.adapters.push_providers import Delivery, Provider
from streams.adapters.push_redis import RedisSentLog
from streams.push_metrics import (
    PUSH_DEAD,
    PUSH_DELAY,
    PUSH_FAILED,
    PUSH_MESSAGES,
    PUSH_NOTIFICATIONS,
    PUSH_RETRIED,
    PUSH_SENT,
    PUSH_UNREGISTERED,
)
from streams.push_model import Coalescer, Job, Retry, Window, decode_record

log = logging.getLogger(__name__)

Mark = tuple[int, int]  # (partition, offset) of a record the sender holds


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Registrations(Protocol):
    """What the sender reads of the push settings read model."""

    async def registration(self, user_id: str, device_id: str) -> Registration | None: ...


class Sender:
    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        topics: Topics,
        producer: Callable[[], Awaitable[AIOKafkaProducer]],
        event_log: EventLog,
        registrations: Registrations,
        write_through: PushSettingsWriter,
        badge: Callable[[str], Awaitable[int]],
        providers: Mapping[str, Provider],
        sent: RedisSentLog,
        window_ms: int,
        retry_for_ms: int,
        first_backoff_ms: int,
        max_backoff_ms: int,
        max_in_flight: int = 64,
        delivery_timeout_s: float = 30.0,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._bootstrap = bootstrap
        self._group_id = group_id
        self._topics = topics
        self._producer = producer
        self._event_log = event_log
        self._registrations = registrations
        self._write_through = write_through
        self._badge = badge
        self._providers = providers
        self._sent = sent
        self._window_ms = window_ms
        self._coalescer = Coalescer(window_ms)
        self._retry_for_ms = retry_for_ms
        self._first_backoff_ms = first_backoff_ms
        self._max_backoff_ms = max_backoff_ms
        self._slots = asyncio.Semaphore(max_in_flight)
        self._delivery_timeout_s = delivery_timeout_s
        self._clock = clock
        self._retries: list[tuple[Retry, Mark]] = []
        self._held: dict[int, Counter[int]] = {}
        self._next: dict[int, int] = {}
        self._committed: dict[int, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # message ids in windows (open, closed or being delivered), per device, until the sent
        # log has them
        self._taken: dict[tuple[str, str], set[int]] = {}

    # -- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        """Until cancelled; raises what the consumer raises (the caller starts it again: it
        then reads from the committed offsets, as after a crash)."""
        self._coalescer = Coalescer(self._window_ms)
        self._retries, self._held, self._next, self._committed, self._taken = [], {}, {}, {}, {}
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="tidings-push-sender",
        )
        mark_rebalancing(self._group_id)
        consumer.subscribe(
            [self._topics.notifications], listener=_Revocations(self, consumer, self._group_id)
        )
        await consumer.start()
        last_commit = time.monotonic()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=100, max_records=1000)
                for tp, records in batches.items():
                    await self._take(tp.partition, records)
                self._start_due()
                if time.monotonic() - last_commit >= 1.0:
                    await self.commit(consumer)
                    last_commit = time.monotonic()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.commit(consumer), 5)
            for task in self._tasks:
                task.cancel()
            await consumer.stop()

    async def _take(self, partition: int, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Hold a partition's batch of records: retries wait for their time, jobs go to their
        device's window unless their message was already notified (one Redis round trip for
        the whole batch)."""
        jobs: list[tuple[Job, Mark]] = []
        for record in records:
            self._next[partition] = record.offset + 1
            try:
                item = decode_record(record.value or b"")
            except (ValueError, KeyError, TypeError) as exc:
                await self._dead_letter(record.key, record.value or b"", f"undecodable: {exc!r}", "unknown")
                continue
            mark = (partition, record.offset)
            if isinstance(item, Retry):
                self._hold(mark)
                self._retries.append((item, mark))
            else:
                jobs.append((item, mark))
        if not jobs:
            return
        wanted = [(j.user_id, j.device_id, j.message_id) for j, _ in jobs]
        done = await self._durably(lambda: self._sent.sent_many(wanted))
        for job, mark in jobs:
            key = (job.user_id, job.device_id)
            if job.message_id in self._taken.get(key, ()):
                # The notifier appended it twice (a crash): its first job is in a window already
                # (open, closed, or being delivered), maybe one before the device's open window.
                continue
            if (job.user_id, job.device_id, job.message_id) in done:
                continue  # delivered before a crash or a rebalance
            self._hold(mark)
            self._coalescer.add(job, mark)
            self._taken.setdefault(key, set()).add(job.message_id)

    def _hold(self, mark: Mark) -> None:
        self._held.setdefault(mark[0], Counter())[mark[1]] += 1

    def _release(self, marks: list[Any]) -> None:
        for partition, offset in marks:
            held = self._held.get(partition)
            if held is None:
                continue  # revoked meanwhile: the new owner reads it again
            held[offset] -= 1
            if held[offset] <= 0:
                del held[offset]

    def _start_due(self) -> None:
        now = self._clock()
        for window in self._coalescer.due(now):
            self._spawn(self._deliver_window(window))
        if self._retries:
            due = [(r, m) for r, m in self._retries if r.not_before <= now]
            if due:
                self._retries = [(r, m) for r, m in self._retries if r.not_before > now]
                for retry, mark in due:
                    self._spawn(self._deliver_retry(retry, mark))

    def _spawn(self, work: Awaitable[None]) -> None:
        async def bounded() -> None:
            # The whole delivery (its reads, the POST, the sent log) holds a slot: 10,000
            # windows due at once (a large group) must not all read Cassandra at once.
            async with self._slots:
                await work

        self.spawn(bounded())

    def spawn(self, work: Awaitable[None]) -> None:
        """A task of the sender's, cancelled when its loop ends."""
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def commit(self, consumer: AIOKafkaConsumer, partitions: set[int] | None = None) -> None:
        """Commit, per partition, the lowest offset still held (or the next to read)."""
        offsets = {}
        for partition, following in self._next.items():
            if partitions is not None and partition not in partitions:
                continue
            held = self._held.get(partition)
            safe = min(held) if held else following
            if self._committed.get(partition) != safe:
                offsets[TopicPartition(self._topics.notifications, partition)] = safe
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("push sender: commit failed (%r); will commit again", exc)
            return
        for tp, offset in offsets.items():
            self._committed[tp.partition] = offset

    def forget(self, partitions: set[int]) -> None:
        """Partitions revoked: their held records are read again by their new owner."""
        for window in self._coalescer.drop(lambda w: w.marks[0][0] not in partitions):
            self._landed(window)  # not delivered here: its new owner reads its jobs again
        self._retries = [(r, m) for r, m in self._retries if m[0] not in partitions]
        for partition in partitions:
            self._held.pop(partition, None)
            self._next.pop(partition, None)
            self._committed.pop(partition, None)

    # -- deliveries ----------------------------------------------------------------------
    async def _deliver_window(self, window: Window) -> None:
        try:
            registration = await self._durably(
                lambda: self._registrations.registration(window.user_id, window.device_id)
            )
            if registration is not None:
                badge = await self._durably(lambda: self._badge(window.user_id))
                payload = window.payload(badge)
                PUSH_NOTIFICATIONS.inc()
                PUSH_MESSAGES.inc(len(window.jobs))
                await self._attempt(registration, payload, attempt=0, first_ts=self._clock())
                newest = max(j.ts for j in window.jobs)
                PUSH_DELAY.observe(max(0, self._clock() - newest) / 1000)
            messages = [(j.message_id, j.ts) for j in window.jobs]
            await self._durably(
                lambda: self._sent.record(window.user_id, window.device_id, messages, self._clock())
            )
            self._landed(window)
            self._release(window.marks)
        except Exception:
            # Only a bug gets here: the records stay held, so a restart delivers them.
            log.exception("push sender: window of %s/%s", window.user_id, window.device_id)

    def _landed(self, window: Window) -> None:
        key = (window.user_id, window.device_id)
        taken = self._taken.get(key)
        if taken is not None:
            taken.difference_update(j.message_id for j in window.jobs)
            if not taken:
                del self._taken[key]

    async def _deliver_retry(self, retry: Retry, mark: Mark) -> None:
        try:
            payload = retry.payload
            registration = await self._durably(
                lambda: self._registrations.registration(payload["user_id"], payload["device_id"])
            )
            if registration is not None:
                await self._attempt(registration, payload, attempt=retry.attempt, first_ts=retry.first_ts)
            self._release([mark])
        except Exception:
            log.exception("push sender: retry of %s", retry.payload.get("notification_id"))

    async def _attempt(
        self, registration: Registration, payload: dict[str, Any], *, attempt: int, first_ts: int
    ) -> None:
        """One delivery; then the registration ends, or a retry is appended, or a dead letter."""
        name = registration.provider
        provider = self._providers.get(name)
        if provider is None:
            await self._dead_letter(
                registration.user_id.encode(), orjson.dumps(payload), f"provider {name} not configured", name
            )
            return
        try:
            delivery = await asyncio.wait_for(provider.send(registration, payload), self._delivery_timeout_s)
        except TimeoutError:
            delivery = Delivery("retry", "no answer within the delivery timeout")
        if delivery.outcome == "ok":
            PUSH_SENT.labels(name).inc()
            return
        PUSH_FAILED.labels(name, delivery.outcome).inc()
        if delivery.outcome == "gone":
            PUSH_UNREGISTERED.labels(name).inc()
            await self._unregister(registration)
            return
        now = self._clock()
        backoff = min(self._first_backoff_ms * 2**attempt, self._max_backoff_ms)
        if delivery.outcome == "retry" and now + backoff - first_ts <= self._retry_for_ms:
            retry = Retry(payload, attempt + 1, first_ts, now + backoff)
            await self._durably(lambda: self._append_retry(retry))
            PUSH_RETRIED.labels(name).inc()
            return
        log.warning(
            "push %s to %s/%s: %s", name, registration.user_id, registration.device_id, delivery.detail
        )
        await self._dead_letter(
            registration.user_id.encode(),
            orjson.dumps(payload),
            f"push {name} after {attempt + 1} attempts: {delivery.detail}",
            name,
        )

    async def _unregister(self, registration: Registration) -> None:
        event = PushUnregistered(
            user_id=registration.user_id,
            device_id=registration.device_id,
            reason="gone",
            registered_ts=registration.registered_ts,
            ts=self._clock(),
        )
        await self._durably(lambda: self._event_log.append(event))
        with contextlib.suppress(Unavailable):  # durable in the log; the projection applies it
            await self._write_through.apply([event])

    async def _append_retry(self, retry: Retry) -> None:
        producer = await self._producer()
        try:
            await producer.send_and_wait(
                self._topics.notifications, key=partition_key(retry.user_id), value=retry.encode()
            )
        except KafkaError as exc:
            raise Unavailable("the notifications topic did not take the retry") from exc

    async def _dead_letter(self, key: bytes | None, value: bytes, error: str, provider: str) -> None:
        async def send() -> None:
            producer = await self._producer()
            try:
                await producer.send_and_wait(
                    self._topics.dead_letters,
                    key=key,
                    value=value,
                    headers=[("error", error.encode()[:4000]), ("source", b"push-sender")],
                )
            except KafkaError as exc:
                raise Unavailable("the dead-letter topic did not take it") from exc

        await self._durably(send)
        PUSH_DEAD.labels(provider).inc()
        log.warning("push sender: dead-lettered (%s): %s", provider, error)

    async def _durably(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call()`` until it does not raise ``Unavailable`` (a backing service is down: the
        records wait, held, and nothing is let go unfinished)."""
        delay = 0.1
        while True:
            try:
                return await call()
            except Unavailable as exc:
                log.warning("push sender: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


class _Revocations(ConsumerRebalanceListener):
    def __init__(self, sender: Sender, consumer: AIOKafkaConsumer, group_id: str) -> None:
        self._sender = sender
        self._consumer = consumer
        self._group_id = group_id

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        mark_rebalancing(self._group_id)
        partitions = {tp.partition for tp in revoked}
        await self._sender.commit(self._consumer, partitions)
        self._sender.forget(partitions)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # Not awaited here: the positions come from the fetcher once this callback returns.
        self._sender.spawn(self._ready(sorted(assigned)))

    async def _ready(self, assigned: list[TopicPartition]) -> None:
        try:
            await mark_ready(self._group_id, assigned, self._consumer.position)
        except KafkaError as exc:  # revoked meanwhile, or stopping: the next assignment reports
            log.info("push sender readiness not reported: %r", exc)
