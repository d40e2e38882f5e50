"""The archive standing in for the sync log rows that ``tidings archive prune`` removed: the
events of one conversation between two log offsets, back as the log holds them
(``projections.sync.ColdLog``)."""

from __future__ import annotations

import asyncio
from typing import Any

from archive.manifest import Manifest
from archive.reader import ArchiveReader
from archive.replay_source import BUILD, QUERIES
from events import ChatEvent, encode_event


def archived_between(
    reader: ArchiveReader, conversation_id: str, partition: int, low: int, high: int, limit: int
) -> list[tuple[int, ChatEvent]]:
    """Up to ``limit`` archived events of one conversation with ``low < offset <= high`` in
    ``partition``, in offset order (what ``/v1/sync`` reads below the prune horizon)."""

    def run(manifest: Manifest | None) -> list[tuple[int, ChatEvent]]:
        found: list[tuple[int, str, tuple[Any, ...]]] = []
        for table, query in QUERIES.items():
            paths = reader.paths(manifest, table)
            if not paths:
                continue
            cur = reader.cursor()
            try:
                rows = cur.execute(
                    f"{query} WHERE conversation_id = $cid AND kafka_partition = $p"
                    " AND kafka_offset > $low AND kafka_offset <= $high ORDER BY kafka_offset LIMIT $limit",
                    {
                        "paths": paths,
                        "cid": conversation_id,
                        "p": partition,
                        "low": low,
                        "high": high,
                        "limit": limit,
                    },
                ).fetchall()
            finally:
                cur.close()
            found += [(row[0], table, row) for row in rows]
        found.sort(key=lambda item: item[0])
        # The log may hold an event twice (a retried append), and so may the archive: the
        # projections absorb it by id, and so do clients.
        return [(offset, BUILD[table](row)) for offset, table, row in found[:limit]]

    return reader.retrying(run)


class ArchivedLog:
    """The archive standing in for the sync log rows that ``tidings archive prune`` removed
    (``projections.sync.ColdLog``)."""

    def __init__(self, reader: ArchiveReader) -> None:
        self._reader = reader

    def pruned_below(self) -> dict[int, int]:
        manifest = self._reader.manifest()
        if manifest is None:
            return {}
        # A prune in progress counts as done: it may be deleting rows below its target now.
        return {
            p: max(manifest.prune_watermarks.get(p, 0), manifest.pruning.get(p, 0))
            for p in set(manifest.prune_watermarks) | set(manifest.pruning)
        }

    async def between(
        self, conversation_id: str, partition: int, low: int, high: int, limit: int
    ) -> list[tuple[int, bytes]]:
        events = await asyncio.get_running_loop().run_in_executor(
            None, archived_between, self._reader, conversation_id, partition, low, high, limit
        )
        return [(offset, encode_event(event)) for offset, event in events]
