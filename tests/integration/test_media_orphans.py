"""The orphan job against the real object store, Cassandra and Kafka: media uploaded and never
sent, and objects nothing refers to, are deleted once older than the orphan age; media that was
sent, and anything younger, stays."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from commands.adapters.kafka_log import KafkaEventLog
from commands.adapters.s3_store import S3ObjectStore
from commands.media_gc import collect_orphans
from events import MediaStored, Topics
from projections.adapters.cql import Cql, connect_to
from projections.adapters.migrate import migrate_cassandra
from projections.media import CassandraMedia
from tidings.media_store import open_store
from tidings.settings import Settings

pytestmark = pytest.mark.integration
DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def gc_settings(services: Settings) -> Iterator[Settings]:
    """A keyspace and a bucket of the test's own, so the job sees only what the test made."""
    settings = services.model_copy(
        update={
            "cassandra_keyspace": f"{services.cassandra_keyspace}_gc",
            "s3_bucket": f"{services.s3_bucket}-gc"[:63],
        }
    )
    cluster, session = connect_to(settings)
    session.execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra_keyspace}", timeout=120)
    migrate_cassandra(
        session,
        settings.cassandra_keyspace,
        replication=settings.cassandra_replication_map(),
        echo=lambda _: None,
    )
    cluster.shutdown()
    yield settings


@pytest.fixture
async def store(gc_settings: Settings) -> AsyncIterator[S3ObjectStore]:
    opened, stack = await open_store(gc_settings)
    async with stack:
        await opened.ensure_bucket()
        async for key, _ in opened.keys():
            await opened.delete(key)
        yield opened


async def test_orphans_older_than_a_day_are_deleted_sent_and_young_media_stay(
    gc_settings: Settings, store: S3ObjectStore
) -> None:
    cluster, session = connect_to(gc_settings)
    producer = KafkaEventLog.producer(gc_settings.kafka_bootstrap, linger_ms=0)
    await producer.start()
    try:
        catalogue = CassandraMedia(Cql(session, gc_settings.cassandra_keyspace))
        catalogue.prepare()
        log = KafkaEventLog(producer, Topics(gc_settings.topic_prefix))
        now = int(time.time() * 1000)

        async def uploaded(age_ms: int) -> MediaStored:
            event = MediaStored(
                media_id=uuid.uuid4().hex,
                uploader_id="gc-user",
                object_key=f"o/{uuid.uuid4().hex}",
                content_type="image/png",
                size=3,
                sha256="00" * 32,
                ts=now - age_ms,
            )
            await store.put_bytes(event.object_key, b"abc", "image/png")
            await catalogue.apply([event])
            return event

        never_sent = await uploaded(DAY_MS)  # 25 hours old when the job runs
        sent = await uploaded(2 * DAY_MS)
        await catalogue.grant(sent.media_id, "dm:a:b", 1)
        young = await uploaded(-13 * 3_600_000)  # 12 hours old when the job runs, below
        abandoned = f"o/{uuid.uuid4().hex}"  # a presigned upload never completed: no row at all
        await store.put_bytes(abandoned, b"xyz", "image/png")

        # Objects are as old as the store says (it sets their time itself), so the job runs as
        # if 25 hours had passed: the objects written now are then over a day old.
        later = now + 25 * 3_600_000
        done = await collect_orphans(catalogue, store, log, now_ms=later, older_than_ms=DAY_MS)

        assert done.media == [never_sent.media_id]
        assert sorted(done.objects) == sorted([never_sent.object_key, abandoned])
        assert await store.size(never_sent.object_key) is None
        assert await store.size(abandoned) is None
        assert await store.size(sent.object_key) == 3
        assert await store.size(young.object_key) == 3
        gone = await catalogue.get(never_sent.media_id)
        assert gone is not None and gone.deleted
        kept = [await catalogue.get(m.media_id) for m in (sent, young)]
        assert all(row is not None and not row.deleted for row in kept)

        # Run again: nothing more to do.
        again = await collect_orphans(catalogue, store, log, now_ms=later, older_than_ms=DAY_MS)
        assert (again.media, again.objects) == ([], [])
    finally:
        await producer.stop()
        cluster.shutdown()
