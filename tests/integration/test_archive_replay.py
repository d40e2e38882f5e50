"""Replay from the archive plus the log rebuilds every read model of the persist worker equal to
the live one, after the warm copies of archived messages were pruned; verify reports a
difference when there is one; switch catches the rebuilt keyspace up and points at it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from archive.adapters.kafka_source import KafkaLogSource
from archive.job import ArchiveJob
from archive.manifest import load
from bench.archive_workload import produce, synthetic_events
from commands.adapters.kafka_log import KafkaEventLog
from events import (
    ChatEvent,
    ConversationMuted,
    MediaRef,
    MediaStored,
    MessageSent,
    PresenceChanged,
    PushRegistered,
    PushUnregistered,
    ThumbnailMade,
    Topics,
    direct_conversation_id,
)
from events.ids import Snowflake
from projections.adapters.cql import Cql, connect_to
from projections.adapters.migrate import migrate_cassandra
from projections.adapters.presence import CassandraPresence
from projections.keys import CassandraKeys
from projections.media import CassandraMedia
from projections.membership import CassandraMembership
from projections.messages import CassandraMessages
from projections.push import CassandraPushSettings
from projections.roster import Roster
from streams.adapters.offsets import committed_offsets
from streams.projector import Projector, Record
from tests.factories import message_sent
from tests.integration.test_rebuild_equals_incremental import scenario
from tidings.archive_prune import prune, trim_log
from tidings.archive_replay import replay, switch, verify
from tidings.keyspaces import active_keyspace
from tidings.migrate import create_log_topics, new_topic
from tidings.settings import Settings
from tidings.worker import persist_stages

PARTITIONS = 3


@pytest.fixture
def replay_settings(services: Settings, tmp_path: Path) -> Iterator[Settings]:
    tag = uuid.uuid4().hex[:6]
    settings = services.model_copy(
        update={
            "cassandra_keyspace": f"{services.cassandra_keyspace}_rl{tag}",
            "topic_prefix": f"{services.topic_prefix}r{tag}.",
            "topic_partitions": PARTITIONS,
            "archive_dir": tmp_path / "archive",
            "state_dir": tmp_path / "state",
            "fanout_threshold": 4,  # the scenario's groups cross it both ways
        }
    )
    topic = Topics(settings.topic_prefix).conversation_events
    topics = [
        topic,
        Topics(settings.topic_prefix).presence_events,
        Topics(settings.topic_prefix).media_events,
        Topics(settings.topic_prefix).user_events,
        Topics(settings.topic_prefix).key_events,
    ]
    cluster, session = connect_to(settings)
    migrate_cassandra(
        session,
        settings.cassandra_keyspace,
        replication=settings.cassandra_replication_map(),
        echo=lambda _: None,
    )

    async def admin(create: bool) -> None:
        client = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await client.start()
        try:
            if create:
                await create_log_topics(client, [new_topic(settings, t, PARTITIONS) for t in topics])
            else:
                await client.delete_topics(topics)
        finally:
            await client.close()

    asyncio.run(admin(True))
    try:
        yield settings
    finally:
        asyncio.run(admin(False))
        # Dropped in the background: Cassandra finishes a drop it received (a schema change
        # takes seconds, which the suite need not wait for).
        drops = [
            session.execute_async(f"DROP KEYSPACE IF EXISTS {row.keyspace_name}", timeout=120)
            for row in list(session.execute("SELECT keyspace_name FROM system_schema.keyspaces"))
            if row.keyspace_name.startswith(settings.cassandra_keyspace)
        ]
        time.sleep(0.3)
        del drops
        cluster.shutdown()


class LiveWorker:
    """The persist worker's stages over the live keyspace, fed from the log in batches."""

    def __init__(self, settings: Settings, cql: Cql) -> None:
        self.settings = settings
        roster = Roster(CassandraMembership(cql).load_roster, threshold=settings.fanout_threshold)
        self.projector = Projector(persist_stages(cql, settings, roster), _NoDeadLetters())
        self.position: dict[int, int] = dict.fromkeys(range(PARTITIONS), 0)

    async def catch_up(self) -> None:
        topic = Topics(self.settings.topic_prefix).conversation_events
        async with KafkaLogSource(self.settings.kafka_bootstrap, topic, PARTITIONS) as source:
            ends = await source.end_offsets()
            for p in range(PARTITIONS):
                async for entries in source.read({p: self.position[p]}, {p: ends[p]}):
                    for i in range(0, len(entries), 37):  # small batches, like a live worker
                        await self.projector.handle(
                            [
                                Record(topic, e.partition, e.offset, e.key, e.value)
                                for e in entries[i : i + 37]
                            ]
                        )
            self.position = ends


async def _commit(settings: Settings, group: str, topic: str, offsets: dict[int, int]) -> None:
    """A consumer group that committed ``offsets`` (a worker that is behind), returned once
    Kafka lists it with them. Its consumer must not auto-commit: on ``stop()`` aiokafka commits
    the positions of the assigned partitions, the log end once it has looked them up, over
    ``offsets`` (this made the trim below pass the group in two full-suite runs)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in offsets])
        await consumer.commit({TopicPartition(topic, p): o for p, o in offsets.items()})
    finally:
        await consumer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        seen: tuple[bool, dict[int, int]] = (False, {})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listed = group in {g for g, *_ in await admin.list_consumer_groups()}
            seen = (listed, await committed_offsets(admin, group, topic, PARTITIONS))
            if seen == (True, offsets):
                return
            await asyncio.sleep(0.5)
        raise AssertionError(f"group {group} committed {offsets}; Kafka lists it: {seen[0]}, with {seen[1]}")
    finally:
        await admin.close()


class _NoDeadLetters:
    async def send(self, record: Record, error: str) -> None:
        raise AssertionError(f"dead letter in a valid log: {error}")


async def _events(seed: int) -> list[ChatEvent]:
    now = int(time.time() * 1000)
    events = list((await scenario(seed))[0])
    events += list(
        synthetic_events(400, start_ms=now - 3_600_000, span_ms=1_000_000, conversations=15, seed=seed)
    )
    return events


@asynccontextmanager
async def _event_log(settings: Settings) -> AsyncIterator[KafkaEventLog]:
    producer = KafkaEventLog.producer(settings.kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        yield KafkaEventLog(producer, Topics(settings.topic_prefix))
    finally:
        await producer.stop()


async def _append_and_apply(settings: Settings, events: Sequence[ChatEvent], live: Any) -> None:
    """``events`` into the log, and projected live by the read model ``live``."""
    async with _event_log(settings) as log:
        for event in events:
            await log.append(event)
    live.prepare()
    await live.apply(events)


async def _presence_live(settings: Settings, cql: Cql) -> int:
    """Presence transitions on their own topic, projected live; returns how many."""
    states: tuple[Literal["online", "away", "offline"], ...] = ("online", "away", "offline")
    events = [
        PresenceChanged(
            user_id=f"p{i % 7}",
            state=states[i % 3],
            last_seen=1000 + i if i % 3 == 2 else None,
            at=10**15 + i,
        )
        for i in range(40)
    ]
    await _append_and_apply(settings, events, CassandraPresence(cql))
    return len(events)


async def _keys_live(settings: Settings, cql: Cql) -> int:
    """The E2EE key directory: devices published with one-time and fallback keys, claims won
    through the conditional write, a deletion and a re-publish, on the key topic and projected
    live as the gateway and the worker do; returns how many key events there are."""
    from commands.keys import add_one_time_keys, claim_keys, delete_device_keys, publish_device_keys
    from events import SignedKey
    from tests.e2ee_support import Device

    store = CassandraKeys(cql)
    store.prepare()
    async with _event_log(settings) as log:
        for user in ("ku0", "ku1"):
            for device_id in ("d1", "d2"):
                device = Device()
                await publish_device_keys(user, device_id, **device.device_keys(), store=store, log=log)
                keys = [SignedKey(**k) for k in device.one_time_keys(3)]
                fallback = SignedKey(**device.fallback_key())
                await add_one_time_keys(user, device_id, keys, fallback, store=store, log=log)
        for _ in range(2):
            await claim_keys("ku1/d1", [("ku0", "d1"), ("ku0", "d2")], store=store, log=log)
        await delete_device_keys("ku1", "d2", store=store, log=log)
        again = Device()
        await publish_device_keys("ku1", "d2", **again.device_keys(), store=store, log=log)
    return 4 * 2 + 4 + 1 + 1


async def _media_live(settings: Settings, cql: Cql) -> tuple[list[ChatEvent], int]:
    """Uploads on the media topic, projected live, and messages carrying them (returned, for the
    conversation topic); returns them and how many media events there are."""
    ids = Snowflake(77)
    uploaded: list[ChatEvent] = []
    messages: list[ChatEvent] = []
    for i in range(6):
        media_id = uuid.uuid4().hex
        uploader, peer = f"mu{i % 3}", f"mv{i % 2}"
        uploaded.append(
            MediaStored(
                media_id=media_id,
                uploader_id=uploader,
                object_key=f"o/{uuid.uuid4().hex}",
                content_type="image/png",
                size=100 + i,
                sha256="ab" * 32,
                width=10,
                height=20,
                ts=1000 + i,
            )
        )
        if i % 2 == 0:
            uploaded.append(
                ThumbnailMade(
                    media_id=media_id,
                    thumbnail_key=f"t/{i}",
                    shared_key=f"s/{i}",
                    location_removed=True,
                    ts=2000,
                )
            )
        mid = ids.next_id()
        messages.append(
            message_sent(
                mid,
                conversation_id=direct_conversation_id(uploader, peer),
                sender_id=uploader,
                client_msg_id=f"m{mid}",
                kind="image",
                body="",
                media=MediaRef(media_id=media_id, content_type="image/png", size=100 + i, sha256="ab" * 32),
            )
        )
    await _append_and_apply(settings, uploaded, CassandraMedia(cql))
    return messages, len(uploaded)


async def _user_events_live(settings: Settings, cql: Cql) -> int:
    """Push registrations, their ends and mutes on the user-events topic, projected live (as
    the gateway writes them through); returns how many."""
    events: list[ChatEvent] = []
    for i in range(12):
        user = f"q{i % 4}"
        events.append(
            PushRegistered(
                user_id=user,
                device_id=f"d{i % 3}",
                provider="webhook",
                endpoint=f"http://127.0.0.1/{i}",
                ts=1000 + i,
            )
        )
        if i % 5 == 0:
            events.append(
                PushUnregistered(user_id=user, device_id=f"d{i % 3}", reason="deleted", ts=1000 + i + 1)
            )
        if i % 4 == 1:  # a 410 for an older registration: the newer one stays
            events.append(
                PushUnregistered(
                    user_id=user, device_id=f"d{i % 3}", reason="gone", registered_ts=999, ts=5000 + i
                )
            )
        events.append(
            ConversationMuted(user_id=user, conversation_id=f"g:{i % 2}", muted=i % 3 != 0, ts=1000 + i)
        )
    await _append_and_apply(settings, events, CassandraPushSettings(cql))
    return len(events)


async def test_replay_rebuilds_every_read_model_equal_to_live(replay_settings: Settings) -> None:
    settings = replay_settings
    topic = Topics(settings.topic_prefix).conversation_events
    cluster, session = connect_to(settings)
    live = LiveWorker(settings, Cql(session, settings.cassandra_keyspace))
    try:
        # Phase A: in the log, projected live, archived, then pruned from the warm tier.
        phase_a = await _events(1)
        await produce(settings.kafka_bootstrap, topic, phase_a)
        await live.catch_up()
        async with KafkaLogSource(settings.kafka_bootstrap, topic, PARTITIONS) as source:
            job = ArchiveJob(
                settings.archive_root, source, topic=topic, partitions=PARTITIONS, chunk_events=300
            )
            archived = await job.run(int(time.time() * 1000) + 86_400_000)
        assert archived.events == len(phase_a)
        deleted, _ = await prune(settings, settings.cassandra_keyspace)
        assert deleted == sum(isinstance(e, MessageSent) for e in phase_a)
        # The log below the archive's watermark goes too, except what a consumer group that
        # is behind has not committed yet; replay below reads the archive for that part.
        watermarks = load(settings.archive_root).watermarks
        behind = min(5, watermarks[0])
        lagging = f"behind-{uuid.uuid4().hex[:6]}"
        await _commit(settings, lagging, topic, {0: behind})
        trimmed = {t.partition: t for t in await trim_log(settings)}
        assert trimmed[0].after == behind and trimmed[0].held_by == lagging, (
            f"{trimmed[0]}: group {lagging} had committed {behind} on partition 0"
        )
        assert all(trimmed[p].after == watermarks[p] for p in range(1, PARTITIONS))
        async with KafkaLogSource(settings.kafka_bootstrap, topic, PARTITIONS) as source:
            starts = await source.beginning_offsets()
        assert starts == {0: behind, **{p: watermarks[p] for p in range(1, PARTITIONS)}}

        # Phase B: only in the log, with uploads on the media topic and messages carrying them.
        media_messages, media = await _media_live(settings, Cql(session, settings.cassandra_keyspace))
        phase_b = await _events(2) + media_messages
        await produce(settings.kafka_bootstrap, topic, phase_b)
        await live.catch_up()
        presence = await _presence_live(settings, Cql(session, settings.cassandra_keyspace))
        presence += await _user_events_live(settings, Cql(session, settings.cassandra_keyspace))
        keys = await _keys_live(settings, Cql(session, settings.cassandra_keyspace))

        state = await replay(settings)
        assert (state.archived, state.from_log) == (len(phase_a), len(phase_b) + presence + media + keys)
        assert state.keyspace == f"{settings.cassandra_keyspace}_r1"
        diffs = verify(settings, settings.cassandra_keyspace, state.keyspace)
        assert {d.table for d in diffs} >= {
            "messages",
            "conversation_buckets",
            "conversations",
            "members",
            "user_conversations",
            "receipts",
            "presence",
            "conversation_log",
            "conversation_heads",
            "user_log",
            "sync_watermarks",
            "media",
            "media_access",
            "push_registrations",
            "conversation_mutes",
            "device_keys",
            "one_time_keys",
            "fallback_keys",
            "one_time_claims",
        }
        assert all(d.rebuilt_rows > 0 for d in diffs), diffs
        assert [d for d in diffs if not d.equal] == []
        # The same with the partitions shared out between two processes.
        shared = await replay(settings, processes=2)
        assert (shared.archived, shared.from_log) == (state.archived, state.from_log)
        assert shared.keyspace == f"{settings.cassandra_keyspace}_r2"
        shared_diffs = verify(settings, settings.cassandra_keyspace, shared.keyspace)
        assert {d.table for d in shared_diffs} == {d.table for d in diffs}
        assert [d for d in shared_diffs if not d.equal] == []

        # Verify finds a difference when there is one.
        group = next(e.conversation_id for e in phase_b if e.conversation_id.startswith("g:"))
        session.execute(
            f"UPDATE {state.keyspace}.conversations SET title = 'changed' WHERE conversation_id = %s",
            (group,),
        )
        [changed] = [d for d in verify(settings, settings.cassandra_keyspace, state.keyspace) if not d.equal]
        assert changed.table == "conversations" and len(changed.only_live) == len(changed.only_rebuilt) == 1

        # Phase C arrives after the replay; switch catches up, then points at the rebuilt keyspace.
        phase_c = await _events(3)
        await produce(settings.kafka_bootstrap, topic, phase_c)
        applied, _ = await switch(settings, state.keyspace)
        # The catch-up, and the presence, media and key topics again.
        assert applied == len(phase_c) + presence + media + keys
        assert active_keyspace(settings) == state.keyspace
        last = [e for e in phase_c if isinstance(e, MessageSent)][-1]
        rebuilt = CassandraMessages(Cql(session, state.keyspace), settings.message_bucket_ms)
        newest = await rebuilt.page(last.conversation_id, before=None, after=None, limit=1)
        assert [m["message_id"] for m in newest] == [str(last.message_id)]
    finally:
        cluster.shutdown()
