"""Composition roots of the operator's archive steps that delete what the archive holds:
prune the warm copies of archived messages and sync log rows, and trim the Kafka log below the
archive's watermark (``tidings archive prune``, ``tidings archive trim-log``). Both run under
the archive's writer lock; replay, verify and switch are ``tidings.archive_replay``.
"""

from __future__ import annotations

from dataclasses import dataclass

from archive.adapters.kafka_source import KafkaLogSource
from archive.manifest import load, save
from archive.reader import ArchiveReader
from events import Topics
from projections.adapters.cql import Cql, connect_to
from projections.archived import delete_archived, delete_archived_log, drop_empty_buckets
from projections.messages import bucket_of
from projections.sync_log import BUCKET_BITS as SYNC_BUCKET_BITS
from streams.adapters.offsets import committed_offsets
from tidings.settings import Settings

# -- prune -------------------------------------------------------------------------------


async def prune(settings: Settings, keyspace: str) -> tuple[int, int]:
    """Delete from ``keyspace.messages`` and the sync log what verified chunks hold and no
    prune removed yet; returns ``(messages deleted, empty buckets dropped)``. The caller holds
    the writer lock.

    The target is written to the manifest first (``pruning``): a sync that reads the manifest
    meanwhile reads everything below it from the archive, and one that read it before sees it
    change and reads again."""
    root = settings.archive_root
    manifest = load(root)
    if manifest is None:
        return 0, 0
    target = dict(manifest.watermarks)
    manifest.pruning = target
    save(root, manifest)
    cluster, session = connect_to(settings)
    try:
        cql = Cql(session, keyspace)
        reader = ArchiveReader(root)
        deleted = 0
        buckets: set[tuple[str, int]] = set()
        for rows in reader.unpruned_messages(manifest):
            deleted += await delete_archived(cql, settings.message_bucket_ms, rows)
            buckets |= {(cid, bucket_of(mid, settings.message_bucket_ms)) for cid, mid in rows}
        dropped = await drop_empty_buckets(cql, sorted(buckets))
        await delete_archived_log(
            cql, sorted(reader.unpruned_log_buckets(manifest, SYNC_BUCKET_BITS)), target
        )
        manifest.prune_watermarks = target
        manifest.pruning = {}
        save(root, manifest)
        return deleted, dropped
    finally:
        cluster.shutdown()


# -- trimming the log -------------------------------------------------------------------


@dataclass(frozen=True)
class Trimmed:
    partition: int
    before: int  # the log's first offset before
    after: int  # and after
    held_by: str | None  # the consumer group that kept it lower than the archive's watermark


async def trim_log(settings: Settings) -> list[Trimmed]:
    """Delete the conversation log's records that verified chunks hold, never past an offset a
    consumer group of the topic has not committed yet (a worker that is behind still reads
    them from the log). Replay reads the archive below the watermark, so nothing is lost to
    it; the caller holds the writer lock."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.records_to_delete import RecordsToDelete
    from aiokafka.structs import TopicPartition

    manifest = load(settings.archive_root)
    if manifest is None:
        return []
    topic = Topics(settings.topic_prefix).conversation_events
    if manifest.topic != topic:
        raise SystemExit(f"the archive copies {manifest.topic}, not {topic}")
    floor = {p: (manifest.watermark(p), None) for p in range(settings.topic_partitions)}
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        for group, *_ in await admin.list_consumer_groups():
            committed = await committed_offsets(admin, group, topic, settings.topic_partitions)
            for partition, offset in committed.items():
                if 0 <= offset < floor[partition][0]:
                    floor[partition] = (offset, group)
        async with KafkaLogSource(settings.kafka_bootstrap, topic, settings.topic_partitions) as source:
            starts = await source.beginning_offsets()
        wanted = {p: f for p, f in floor.items() if f[0] > starts.get(p, 0)}
        done: dict[int, int] = {}
        if wanted:
            result = await admin.delete_records(
                {TopicPartition(topic, p): RecordsToDelete(before_offset=f[0]) for p, f in wanted.items()}
            )
            done = {tp.partition: low for tp, low in result.items()}
        return [
            Trimmed(p, starts.get(p, 0), done.get(p, starts.get(p, 0)), floor[p][1]) for p in sorted(floor)
        ]
    finally:
        await admin.close()
