"""KIP-227 fetch sessions against the real Kafka: the workers' consumer
(``streams.adapters.faust_fetch``'s, a ``LeanFetcher`` in sessions) reads every event once and
in order through a session's incremental fetches, partitions paused and resumed (forgotten,
then named again), a seek back, and a session the broker refuses (a wrong epoch: the next
fetch is full and opens a new one)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.adapters.faust_fetch import _DeliverConsumer
from streams.adapters.kafka_fetch_session import FetchSession, SessionFetchRequest
from tidings.settings import Settings

PARTITIONS = 12


class _Wire:
    """Each session fetch the consumer sends, with the broker's answer."""

    def __init__(self) -> None:
        self.fetches: list[dict[str, Any]] = []


def _watch(consumer: Any) -> tuple[_Wire, dict[int, FetchSession]]:
    fetcher = consumer._fetcher
    replies = fetcher._client
    inner = type(replies).send.__get__(replies)
    wire = _Wire()

    async def send(node_id: int, request: Any, **kwargs: Any) -> Any:
        response = await inner(node_id, request, **kwargs)
        if isinstance(request, SessionFetchRequest):
            wire.fetches.append(
                {
                    "session": request.session_metadata,
                    "named": sum(len(parts) for _, parts in request.send),
                    "forgotten": sorted(p for _, parts in request.forgotten for p in parts),
                    "error": response.error_code,
                    "answer_session": response.session_id,
                }
            )
        return response

    replies.send = send
    return wire, fetcher._sessions


async def _produce(
    bootstrap: str, topic: str, per_partition: int, tag: str, partitions: list[int] | None = None
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        batch = [
            producer.send(topic, f"{tag}:{p}:{i}".encode(), partition=p)
            for i in range(per_partition)
            for p in (range(PARTITIONS) if partitions is None else partitions)
        ]
        await asyncio.gather(*[await f for f in batch])
    finally:
        await producer.stop()


async def _take(
    consumer: Any, into: dict[int, list[tuple[int, bytes]]], count: int, within: float = 30
) -> None:
    deadline = time.monotonic() + within
    got = 0
    while got < count:
        assert time.monotonic() < deadline, f"only {got} of {count} events within {within} s"
        batches = await consumer.getmany(timeout_ms=200)
        for tp, records in batches.items():
            into[tp.partition] += [(r.offset, r.value) for r in records]
            got += len(records)


async def test_a_session_reads_everything_once_through_pauses_a_seek_and_a_refused_epoch(
    services: Settings,
) -> None:
    bootstrap = services.kafka_bootstrap
    topic = f"{services.topic_prefix}fsession{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer = _DeliverConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    seen: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
    try:
        await consumer.start()
        wire, sessions = _watch(consumer)  # before the assignment starts the fetches
        consumer.assign(tps)

        for _ in range(4):  # in rounds: several fetches
            await _produce(bootstrap, topic, 5, "first")
            await _take(consumer, seen, 5 * PARTITIONS)
        opened = [f for f in wire.fetches if f["session"] == (0, 0) and f["answer_session"]]
        assert opened, wire.fetches[:3]
        assert opened[0]["named"] == PARTITIONS  # the first fetch is full
        later = [f for f in wire.fetches if f["session"][0] != 0]
        assert later, wire.fetches
        assert all(f["error"] == 0 for f in later), later
        assert [f["session"][1] for f in later] == list(range(1, len(later) + 1))  # epochs in step

        # Paused partitions leave the session (forgotten) and read nothing; resumed, they are
        # named again from where they stopped.
        paused = tps[:6]
        consumer.pause(*paused)
        await _produce(bootstrap, topic, 10, "second")
        await _take(consumer, seen, 10 * 6)
        assert any(f["forgotten"] == list(range(6)) for f in wire.fetches)
        assert all(len(seen[p]) == 20 for p in range(6))
        consumer.resume(*paused)
        await _take(consumer, seen, 10 * 6)

        # One event on one partition: the fetch after it names that partition alone (the
        # others are in the session at unchanged offsets).
        mark = len(wire.fetches)
        await _produce(bootstrap, topic, 1, "lone", partitions=[11])
        await _take(consumer, seen, 1)
        deadline = time.monotonic() + 10
        while len(wire.fetches) < mark + 2:
            assert time.monotonic() < deadline, wire.fetches[mark:]
            await asyncio.sleep(0.05)
        assert [f["named"] for f in wire.fetches[mark:]][-1] == 1, wire.fetches[mark:]

        # A seek back: the partition is named with its new offset and read again from there.
        consumer.seek(tps[0], 5)
        again: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        await _take(consumer, again, 25)
        assert [o for o, _ in again[0]] == list(range(5, 30))

        # The broker refuses a wrong epoch (INVALID_FETCH_SESSION_EPOCH): the session ends
        # here, a full fetch opens a new one, and nothing is skipped.
        assert all(f["error"] == 0 for f in wire.fetches), wire.fetches  # one session all along
        assert {f["session"][0] for f in wire.fetches} == {0, wire.fetches[-1]["session"][0]}
        (session,) = sessions.values()
        old = session.session_id
        session.epoch += 3
        await _produce(bootstrap, topic, 1, "third")
        await _take(consumer, seen, PARTITIONS)
        assert any(f["error"] == 71 for f in wire.fetches)
        assert session.session_id not in (0, old)

        for p in range(PARTITIONS):
            lone = [b"lone"] if p == 11 else []
            offsets = [o for o, _ in seen[p]]
            assert offsets == list(range(31 + len(lone))), f"partition {p}: {offsets}"
            tags = [v.split(b":")[0] for _, v in seen[p]]
            assert tags == [b"first"] * 20 + [b"second"] * 10 + lone + [b"third"]
    finally:
        await consumer.stop()
        await admin.delete_topics([topic])
        await admin.close()
