"""A Kafka topic of its own per test module, filled with a synthetic log, and helpers to run
the archive job on it in-process or as the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from archive.adapters.kafka_source import KafkaLogSource
from archive.compact import compact
from archive.job import ArchiveJob, RunSummary
from bench.archive_workload import produce, synthetic_events
from events import ChatEvent, Topics
from tidings.migrate import create_log_topics, new_topic
from tidings.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DAY_MS = 86_400_000
PARTITIONS = 3


@dataclass
class Log:
    settings: Settings  # topic prefix and partitions of this log
    events: list[ChatEvent]
    cutoff_ms: int

    @property
    def topic(self) -> str:
        return Topics(self.settings.topic_prefix).conversation_events

    @property
    def old(self) -> list[ChatEvent]:
        return [e for e in self.events if e.ts < self.cutoff_ms]

    def env(self, archive_dir: Path, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "TIDINGS_TOPIC_PREFIX": self.settings.topic_prefix,
            "TIDINGS_TOPIC_PARTITIONS": str(PARTITIONS),
            "TIDINGS_ARCHIVE_DIR": str(archive_dir),
            **extra,
        }

    def cli(self, archive_dir: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tidings", *args],
            cwd=ROOT,
            env=self.env(archive_dir, **extra),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def archive(self, root: Path, *, chunk_events: int, compact_after: bool = False) -> RunSummary:
        async def main() -> RunSummary:
            async with KafkaLogSource(self.settings.kafka_bootstrap, self.topic, PARTITIONS) as source:
                job = ArchiveJob(
                    root, source, topic=self.topic, partitions=PARTITIONS, chunk_events=chunk_events
                )
                return await job.run(self.cutoff_ms)

        summary = asyncio.run(main())
        if compact_after:
            compact(root)
        return summary


def make_log(
    services: Settings, *, old: int, recent: int, seed: int = 1, extra: Sequence[ChatEvent] = ()
) -> Iterator[Log]:
    """A fresh topic with ``old`` events 200 to 190 days old and ``recent`` from the last day;
    the cutoff (90 days) lies between them; ``extra`` events between the two. Deleted afterwards."""
    prefix = f"{services.topic_prefix}t{uuid.uuid4().hex[:8]}."
    settings = services.model_copy(update={"topic_prefix": prefix, "topic_partitions": PARTITIONS})
    now = int(time.time() * 1000)
    events = list(
        synthetic_events(old, start_ms=now - 200 * DAY_MS, span_ms=10 * DAY_MS, conversations=60, seed=seed)
    )
    events += list(extra)  # in the log before the recent ones (the job stops at the first of those)
    events += list(
        synthetic_events(recent, start_ms=now - DAY_MS, span_ms=DAY_MS // 2, conversations=20, seed=seed + 1)
    )
    topic = Topics(prefix).conversation_events

    async def setup() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
        await admin.start()
        try:
            await create_log_topics(admin, [new_topic(services, topic, PARTITIONS)])
        finally:
            await admin.close()
        await produce(services.kafka_bootstrap, topic, events)

    async def teardown() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()

    asyncio.run(setup())
    try:
        yield Log(settings, events, now - 90 * DAY_MS)
    finally:
        asyncio.run(teardown())


def tree(root: Path) -> dict[str, bytes]:
    """Every Parquet file under ``root`` (relative path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}
