"""The work of ``tidings replay`` on a set of log partitions: the archived events of each, then
its log from the archive's watermark to the end offsets the replay captured, applied to the
read models of the persist worker in a keyspace the caller has migrated.

Partitions are independent (a conversation lives in one), so a replay can run several of
these at once in one process (the stores are latency-bound) and in several processes (the
Python side is CPU-bound: one process is one core at most). Each process has its own
Cassandra session, roster and projector; its roster sees every event of its conversations
in log order, as the live worker's does.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from archive.adapters.kafka_source import KafkaLogSource
from archive.manifest import Manifest, load
from archive.reader import ArchiveReader
from archive.replay_source import archived_events
from events import Topics
from projections.adapters.cql import Cql, connect_to
from projections.membership import CassandraMembership
from projections.messages import NAME as MESSAGES
from projections.roster import Roster
from projections.sync_log import CassandraSyncLog
from streams.combined import CombinedWrites
from streams.projector import Projector, Record
from tidings.settings import Settings
from tidings.worker import persist_stages

log = logging.getLogger(__name__)


class CountedDeadLetters:
    """Replay does not re-send poison events to the dead-letter topic (the live projector
    did); it counts and logs them."""

    def __init__(self) -> None:
        self.count = 0

    async def send(self, record: Record, error: str) -> None:
        self.count += 1
        log.warning("replay skipped %s:%s@%s: %s", record.topic, record.partition, record.offset, error)


@dataclass(frozen=True)
class PartitionJob:
    """What one replay process does (picklable: it crosses to a spawned process)."""

    settings: Settings
    keyspace: str
    projections: list[str]  # names of the persist worker's stages to rebuild
    partitions: list[int]
    starts: dict[int, int]  # the archive's watermark per partition (where the log part starts)
    ends: dict[int, int]
    batch: int = 20_000
    concurrency: int = 4


@dataclass
class PartitionResult:
    archived: int = 0
    from_log: int = 0
    statements: int = 0
    requests: int = 0
    shadowed: int = 0
    skipped: int = 0


async def replay_partitions(job: PartitionJob, add: Callable[[int], None]) -> PartitionResult:
    """Replay ``job.partitions`` (``job.concurrency`` at a time); ``add(n)`` after every
    ``n`` events applied."""
    settings = job.settings
    loop = asyncio.get_running_loop()
    cluster, session = await loop.run_in_executor(None, connect_to, settings)
    try:
        cql = Cql(session, job.keyspace)
        roster = Roster(CassandraMembership(cql).load_roster, threshold=settings.fanout_threshold)
        stages = await loop.run_in_executor(None, persist_stages, cql, settings, roster)
        stages = [s for s in stages if s.name in job.projections]
        dead = CountedDeadLetters()
        # One round of writes per batch for all read models (streams.combined).
        batch = settings.cassandra_batch_partitions
        everything = Projector([CombinedWrites(cql, stages, partitions_per_batch=batch)], dead)
        # Events whose warm copies were pruned: everything but the warm message rows and the
        # sync log's rows (the sync log's other tables and its watermark are still written).
        log_less = CassandraSyncLog(cql, log_rows=False)
        await loop.run_in_executor(None, log_less.prepare)
        pruned_stages = [log_less if s.name == log_less.name else s for s in stages if s.name != MESSAGES]
        pruned_only = Projector([CombinedWrites(cql, pruned_stages, partitions_per_batch=batch)], dead)
        manifest = load(settings.archive_root)
        reader = ArchiveReader(settings.archive_root)
        topic = Topics(settings.topic_prefix).conversation_events
        result = PartitionResult()
        todo = list(job.partitions)

        async def partitions_one_by_one() -> None:
            async with KafkaLogSource(settings.kafka_bootstrap, topic, settings.topic_partitions) as source:
                while todo:
                    p = todo.pop(0)
                    # (Awaited first, added after: `x += await ...` would read x before the await.)
                    if manifest is not None:
                        archived = await _replay_archived(
                            reader, manifest, p, topic, everything, pruned_only, add, job.batch
                        )
                        result.archived += archived
                    logged = await replay_log(source, p, job.starts[p], job.ends[p], everything, add)
                    result.from_log += logged

        await asyncio.gather(*(partitions_one_by_one() for _ in range(min(job.concurrency, len(todo)))))
        result.statements, result.requests = cql.statements_sent, cql.requests_sent
        result.shadowed = cql.statements_shadowed
        result.skipped = dead.count
        return result
    finally:
        cluster.shutdown()


async def _replay_archived(
    reader: ArchiveReader,
    manifest: Manifest,
    partition: int,
    topic: str,
    everything: Projector,
    pruned_only: Projector,
    add: Callable[[int], None],
    batch: int,
) -> int:
    pruned_below = manifest.prune_watermarks.get(partition, 0)
    loop = asyncio.get_running_loop()
    batches = archived_events(reader, manifest, partition, batch=batch)
    applied = 0
    while True:
        chunk = await loop.run_in_executor(None, next, batches, None)
        if chunk is None:
            return applied
        events = [(Record(topic, partition, offset, None, b""), event) for offset, event in chunk]
        pruned = [item for item in events if item[0].offset < pruned_below]
        warm = [item for item in events if item[0].offset >= pruned_below]
        # Offsets below the prune mark come first in the partition: the order holds.
        if pruned:
            await pruned_only.handle_decoded(pruned)
        if warm:
            await everything.handle_decoded(warm)
        applied += len(events)
        add(len(events))


async def replay_log(
    source: KafkaLogSource,
    partition: int,
    start: int,
    end: int,
    projector: Projector,
    add: Callable[[int], None],
) -> int:
    """Apply ``partition``'s log from ``start`` to ``end`` (exclusive); returns how many."""
    applied = 0
    async for entries in source.read({partition: start}, {partition: end}):
        records = [Record("", e.partition, e.offset, e.key, e.value) for e in entries]
        await projector.handle(records)
        applied += len(records)
        add(len(records))
    return applied


# -- in a process of its own ---------------------------------------------------------------

_progress: Any = None  # the parent's queue, set in each child by the pool's initializer


def init_child(progress: multiprocessing.Queue[int | None]) -> None:
    global _progress
    _progress = progress
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_child(job: PartitionJob) -> PartitionResult:
    """The entry point of a replay process (``ProcessPoolExecutor`` with ``init_child``)."""
    return asyncio.run(replay_partitions(job, _progress.put))
