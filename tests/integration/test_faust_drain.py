"""The worker's Faust app (``streams.app.create_app``, its batch agent from
``streams.adapters.faust_batches``, its drain loop from ``streams.adapters.faust_drain``, its
aiokafka consumer in the agents' loop from ``streams.adapters.faust_sameloop``) against the real
Kafka: it projects every event in order per partition, two apps of one group rebalance the
partitions between them and back, the group's committed offsets reach the end of every
partition, and an app started again resumes from them. A new group that
starts at the log's end (delivery's) reports ready only once it reads: nothing sent after that
is skipped."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Sequence

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from mode.threads import WorkerThread
from prometheus_client import REGISTRY

from events import ChatEvent, MessageSent, Topics, encode_event, partition_key
from streams.adapters import faust_drain, faust_sameloop
from streams.app import create_app
from tests.contracts import spread_ids
from tests.factories import message_sent
from tests.polling import until as _until
from tidings.settings import Settings

PARTITIONS = 4


class _Recorder:
    """A positioned stage that remembers which app saw which event where."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[tuple[int, int, int]] = []  # (partition, offset, message_id)

    async def apply_at(self, events: Sequence[tuple[int, int, ChatEvent]]) -> None:
        for partition, offset, event in events:
            assert isinstance(event, MessageSent)
            self.seen.append((partition, offset, event.message_id))


async def _send(bootstrap: str, topic: str, events: Sequence[MessageSent]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for event in events:
            await producer.send(topic, encode_event(event), key=partition_key(event.conversation_id))
        await producer.flush()
    finally:
        await producer.stop()


async def _offsets(bootstrap: str, group: str, topic: str) -> tuple[dict[int, int], dict[int, int | None]]:
    """(end offsets, the group's committed offsets) per partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        committed = {tp.partition: await consumer.committed(tp) for tp in tps}
        return {tp.partition: end for tp, end in ends.items()}, committed
    finally:
        await consumer.stop()


def _assigned(app: faust.App, topic: str) -> set[int]:
    """The app's partitions of ``topic`` (its assignment also holds Faust's leader topic)."""
    return {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}


def _app(
    services: Settings,
    group: str,
    topics: Topics,
    recorder: _Recorder,
    offset_reset: str = "earliest",
    batch_size: int = 50,
) -> faust.App:
    app = create_app(
        offset_reset=offset_reset,
        app_id=group,
        bootstrap=services.kafka_bootstrap,
        topics=topics,
        partitions=PARTITIONS,
        stages=[recorder],
        batch_size=batch_size,
        batch_window_s=0.005,
        session_timeout_s=10.0,
    )
    assert isinstance(app.consumer, faust_drain.Consumer)
    assert isinstance(app.consumer._thread, faust_sameloop.InLoop)
    assert list(app.batch_agents) == [topics.conversation_events]
    return app


async def _fresh(services: Settings, tag: str) -> tuple[str, Topics, str, AIOKafkaAdminClient]:
    """A run id, topics and a group of its own (the caller deletes the topics and closes the
    admin client)."""
    run = uuid.uuid4().hex[:8]
    topics = Topics(f"{services.topic_prefix}{tag}{run}.")
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    await admin.start()
    names = [topics.conversation_events, topics.dead_letters]
    await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
    return run, topics, f"{services.worker_app_id}-{tag}-{run}", admin


def _consumer_threads() -> list[threading.Thread]:
    """mode's service threads (Faust's consumer thread is one) now alive."""
    return [t for t in threading.enumerate() if isinstance(t, WorkerThread) and t.is_alive()]


async def test_worker_app_projects_rebalances_and_commits(services: Settings) -> None:
    run, topics, group, admin = await _fresh(services, "drain")
    bootstrap, source = services.kafka_bootstrap, topics.conversation_events
    ids = iter(spread_ids(700, step_ms=1))

    def events(n: int) -> list[MessageSent]:
        return [message_sent(next(ids), conversation_id=f"dm:a{i % 60}:b{run}") for i in range(n)]

    first, second, third, fourth = events(200), events(200), events(200), events(100)
    a, b, c = _Recorder("a"), _Recorder("b"), _Recorder("c")
    app_a, app_b = _app(services, group, topics, a), _app(services, group, topics, b)
    app_c = _app(services, group, topics, c)

    def got(*recorders: _Recorder) -> set[int]:
        return {mid for r in recorders for _, _, mid in r.seen}

    try:
        await _send(bootstrap, topics.conversation_events, first)
        await app_a.start()
        await _until(lambda: got(a) >= {e.message_id for e in first}, 60, "app a projects the first 200")
        # Its consumer fetched and rebalanced in this loop: no consumer thread was started.
        assert _consumer_threads() == []

        # A second app joins the group: the partitions are shared out, then it leaves again.
        await app_b.start()

        def shared() -> bool:
            mine, theirs = _assigned(app_a, source), _assigned(app_b, source)
            return bool(mine) and bool(theirs) and not mine & theirs and len(mine | theirs) == PARTITIONS

        await _until(shared, 90, "the group shares the partitions out between a and b")
        await _send(bootstrap, topics.conversation_events, second)
        want = {e.message_id for e in first + second}
        await _until(lambda: got(a, b) >= want, 90, "a and b project the second 200")
        assert {p for p, _, _ in b.seen} == _assigned(app_b, source)
        await app_b.stop()

        await _send(bootstrap, topics.conversation_events, third)
        want |= {e.message_id for e in third}
        await _until(lambda: got(a, b) >= want, 90, "a takes every partition back and projects the rest")
        # Faust commits what was acked every 2.8 s: the group reaches the end while a runs (an
        # event projected but not yet acked when an app stops is delivered again, not lost).
        progress: list[tuple[dict[int, int], dict[int, int | None]]] = []
        deadline = time.monotonic() + 60
        while not progress or progress[-1][0] != progress[-1][1]:
            assert time.monotonic() < deadline, f"committed offsets never reached the end: {progress[-1]}"
            await asyncio.sleep(0.5)
            progress.append(await _offsets(bootstrap, group, source))
        await app_a.stop()

        assert got(a, b) == want
        ends, committed = await _offsets(bootstrap, group, source)
        for p in range(PARTITIONS):
            seen = {o for r in (a, b) for q, o, _ in r.seen if q == p}
            assert seen == set(range(ends[p])), f"partition {p}: an offset never projected"
            for r in (a, b):
                # First sightings only: an event handled but not yet committed at a rebalance
                # may come again (at least once), from an earlier offset.
                mine = list(dict.fromkeys(o for q, o, _ in r.seen if q == p))
                assert mine == sorted(mine), f"partition {p}: {r.name} projected out of order"
        assert committed == ends
        assert sum(ends.values()) == 600

        # Started again (a new member of the group), an app resumes at the committed offsets:
        # it projects the events sent since, and none before them again.
        await _send(bootstrap, topics.conversation_events, fourth)
        await app_c.start()
        await _until(lambda: got(c) >= {e.message_id for e in fourth}, 90, "app c projects the fourth 100")
        ends_after, _ = await _offsets(bootstrap, group, source)
        for p in range(PARTITIONS):
            resumed = sorted(o for q, o, _ in c.seen if q == p)
            assert resumed == list(range(committed[p] or 0, ends_after[p])), f"partition {p}"
        assert got(c) == {e.message_id for e in fourth}
    finally:
        for app in (app_a, app_b, app_c):
            if app.started and not app.should_stop:
                await app.stop()
        await admin.delete_topics([topics.conversation_events, topics.dead_letters])
        await admin.close()


class _FirstSeen(_Recorder):
    """A recorder that also keeps when it first saw each partition."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.first_seen: dict[int, float] = {}

    async def apply_at(self, events: Sequence[tuple[int, int, ChatEvent]]) -> None:
        now = time.monotonic()
        for partition, _, _ in events:
            self.first_seen.setdefault(partition, now)
        await super().apply_at(events)


class _SlowOnce(_Recorder):
    """A recorder whose batch takes ``hold`` seconds once ``slow`` is set (the first batch
    after it); it keeps each batch's partitions and when it started and ended."""

    def __init__(self, name: str, hold: float) -> None:
        super().__init__(name)
        self.hold = hold
        self.slow = asyncio.Event()
        self.in_slow = asyncio.Event()
        self.batches: list[tuple[set[int], float, float]] = []

    async def apply_at(self, events: Sequence[tuple[int, int, ChatEvent]]) -> None:
        started = time.monotonic()
        if self.slow.is_set() and not self.in_slow.is_set():
            self.in_slow.set()
            await asyncio.sleep(self.hold)
        await super().apply_at(events)
        self.batches.append(({p for p, _, _ in events}, started, time.monotonic()))


async def test_a_rebalance_waits_for_the_batch_in_hand_before_the_partition_moves(services: Settings) -> None:
    """The batch agent's batch in the handler counts as unacked (``faust_batches``): the
    revocation waits for it and commits it, so the member that takes the partition over starts
    after it, from past it (without the wait: the same offsets again, at the same time)."""
    run, topics, group, admin = await _fresh(services, "inhand")
    bootstrap, source = services.kafka_bootstrap, topics.conversation_events
    ids = iter(spread_ids(400, step_ms=1))

    def events(n: int) -> list[MessageSent]:
        return [message_sent(next(ids), conversation_id=f"dm:a{i % 40}:b{run}") for i in range(n)]

    first, second, third = events(100), events(200), events(100)
    a, b = _SlowOnce("a", hold=3.0), _FirstSeen("b")
    # a's batches hold every partition's records of a fetch: b is sure to take one of them over.
    app_a, app_b = _app(services, group, topics, a, batch_size=1000), _app(services, group, topics, b)
    try:
        await _send(bootstrap, source, first)
        await app_a.start()
        await _until(
            lambda: {m for _, _, m in a.seen} >= {e.message_id for e in first}, 60, "a projects the first"
        )
        a.slow.set()
        await _send(bootstrap, source, second)
        await asyncio.wait_for(a.in_slow.wait(), 30)
        await app_b.start()  # joins while a's batch is in the handler
        await _until(lambda: bool(_assigned(app_b, source)), 60, "b holds partitions")
        # Something for b to project on the partitions it took over.
        await _send(bootstrap, source, third)
        want = {e.message_id for e in first + second + third}
        await _until(lambda: {m for r in (a, b) for _, _, m in r.seen} >= want, 90, "every event projected")

        slow_partitions, _, slow_end = next(batch for batch in a.batches if batch[2] - batch[1] >= a.hold)
        moved = slow_partitions & set(b.first_seen)
        assert moved, f"b took over none of the partitions in a's batch ({slow_partitions})"
        # b took over partitions of the batch in hand: only once it had ended, and not its offsets.
        for p in moved:
            assert b.first_seen[p] >= slow_end, f"partition {p}: b started before a's batch ended"
            a_offsets = {o for q, o, _ in a.seen if q == p}
            b_offsets = {o for q, o, _ in b.seen if q == p}
            assert not a_offsets & b_offsets, f"partition {p}: projected again by b"
    finally:
        for app in (app_a, app_b):
            if app.started and not app.should_stop:
                await app.stop()
        await admin.delete_topics([topics.conversation_events, topics.dead_letters])
        await admin.close()


async def test_a_new_group_at_the_logs_end_reads_everything_sent_once_it_says_ready(
    services: Settings,
) -> None:
    run, topics, group, admin = await _fresh(services, "ready")
    bootstrap = services.kafka_bootstrap
    ids = iter(spread_ids(200, step_ms=1))
    before = [message_sent(next(ids), conversation_id=f"dm:a{i % 20}:b{run}") for i in range(50)]
    after = [message_sent(next(ids), conversation_id=f"dm:a{i % 20}:b{run}") for i in range(100)]
    recorder = _Recorder("new")
    app = _app(services, group, topics, recorder, offset_reset="latest")

    def ready() -> float | None:
        return REGISTRY.get_sample_value("tidings_consumer_ready", {"group": group})

    try:
        await _send(bootstrap, topics.conversation_events, before)  # before it joined: skipped
        await app.start()
        assert ready() == 0
        await _until(lambda: ready() == 1, 60, "the new group says it reads")
        assert REGISTRY.get_sample_value("tidings_consumer_assigned_partitions", {"group": group}) == len(
            app.consumer.assignment()
        )
        # At once: a position not yet reset to the log's end would skip some of these.
        await _send(bootstrap, topics.conversation_events, after)
        want = {e.message_id for e in after}
        await _until(lambda: {m for _, _, m in recorder.seen} >= want, 30, "every event sent after ready")
        assert {m for _, _, m in recorder.seen} == want
    finally:
        if app.started and not app.should_stop:
            await app.stop()
        await admin.delete_topics([topics.conversation_events, topics.dead_letters])
        await admin.close()
