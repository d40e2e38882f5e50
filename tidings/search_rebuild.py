"""``tidings replay --projection search``: every search shard rebuilt from the archive and the
log, beside the live ones; ``verify`` compares the hit sets of a fixed query list; ``switch``
puts the rebuilt shards in place (with the search worker stopped).

The rebuilt shards are under ``<search_root>/rebuilt/<topic>/p<N>``, each with the offset it
was rebuilt to. After ``switch`` the search worker resumes each shard from that offset: the
events its consumer group had already passed come from the log (``projections.adapters.search``'s
backfill), those it had not yet reached from the group as always.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from archive.adapters.kafka_source import KafkaLogSource
from archive.manifest import load
from archive.reader import ArchiveReader
from archive.replay_source import archived_events
from events import ChatEvent, Topics, decode_event
from projections.adapters.search import SearchIndexer, ShardReaders, analyze
from projections.search_query import parse
from tidings.settings import Settings

REBUILT = "rebuilt"
# Fixed queries for verify: words, a phrase, prefixes (common words of chat).
VERIFY_QUERIES = (
    "hello",
    "hi",
    "the",
    "ok",
    "thanks",
    "yes",
    "no",
    '"see you"',
    "mess*",
    "he*",
    "lo*",
    "a1*",
)


@dataclass
class SearchRebuild:
    archived: int = 0
    from_log: int = 0
    seconds: float = 0.0
    ends: dict[int, int] = field(default_factory=dict)


def rebuilt_root(settings: Settings) -> Path:
    return settings.search_root / REBUILT


async def rebuild_search(
    settings: Settings, *, on_progress: Callable[[int], None] | None = None
) -> SearchRebuild:
    """Rebuild every shard into ``rebuilt_root`` (replacing an earlier rebuild)."""
    started = time.monotonic()
    topic = Topics(settings.topic_prefix).conversation_events
    root = rebuilt_root(settings)
    shutil.rmtree(root / topic, ignore_errors=True)
    manifest = load(settings.archive_root)
    reader = ArchiveReader(settings.archive_root)
    # Commits are what cost: one per shard every few seconds is plenty for a rebuild.
    indexer = SearchIndexer(root, topic, commit_interval_s=5.0)
    result = SearchRebuild()
    loop = asyncio.get_running_loop()

    def done(n: int) -> None:
        if on_progress is not None:
            on_progress(n)

    try:
        async with KafkaLogSource(settings.kafka_bootstrap, topic, settings.topic_partitions) as source:
            ends = await source.end_offsets()
            for p in sorted(ends):
                if manifest is not None:
                    batches = archived_events(reader, manifest, p, batch=20_000)
                    while (chunk := await loop.run_in_executor(None, next, batches, None)) is not None:
                        await indexer.apply_at([(p, offset, event) for offset, event in chunk])
                        result.archived += len(chunk)
                        done(len(chunk))
                start = manifest.watermark(p) if manifest is not None else 0
                async for entries in source.read({p: start}, {p: ends[p]}):
                    events: list[tuple[int, int, ChatEvent]] = []
                    for entry in entries:
                        try:
                            events.append((p, entry.offset, decode_event(entry.value)))
                        except ValueError:
                            continue  # dead-lettered by the live worker; never indexed
                    await indexer.apply_at(events)
                    result.from_log += len(entries)
                    done(len(entries))
        result.ends = ends
    finally:
        indexer.close()
    result.seconds = time.monotonic() - started
    return result


@dataclass
class QueryDiff:
    q: str
    live: int
    rebuilt: int
    only_live: list[int]
    only_rebuilt: list[int]

    @property
    def equal(self) -> bool:
        return not self.only_live and not self.only_rebuilt


def verify_search(settings: Settings, queries: tuple[str, ...] = VERIFY_QUERIES) -> list[QueryDiff]:
    """The hit sets (message ids, every conversation) of ``queries`` in the live shards and in
    the rebuilt ones."""
    topic = Topics(settings.topic_prefix).conversation_events
    live = ShardReaders(settings.search_root, topic)
    rebuilt = ShardReaders(rebuilt_root(settings), topic)
    diffs = []
    for q in queries:
        parsed = parse(q, analyze)
        a, b = live.all_ids(parsed), rebuilt.all_ids(parsed)
        diffs.append(QueryDiff(q, len(a), len(b), sorted(a - b), sorted(b - a)))
    return diffs


def switch_search(settings: Settings) -> Path:
    """Put the rebuilt shards in place of the live ones (the search worker must be stopped);
    returns where the old ones were moved."""
    topic = Topics(settings.topic_prefix).conversation_events
    source = rebuilt_root(settings) / topic
    if not source.is_dir():
        raise FileNotFoundError(f"nothing rebuilt at {source}: run tidings replay --projection search")
    live = settings.search_root / topic
    old = settings.search_root / f"{topic}.old-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    if live.exists():
        live.rename(old)
    source.rename(live)
    return old
