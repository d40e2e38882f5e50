"""The archive as a replay source: the archived events of one log partition, back as catalogue
events, in offset order (the order the live projector applied them); and as the sync log's
source below the prune horizon (``ArchivedLog``).

Unreadable entries are left out: the live projector dead-lettered them too.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Iterator
from typing import Any

import duckdb
import orjson

from archive.manifest import Manifest
from archive.reader import ArchiveReader
from events import ChatEvent, MediaRef, MessageSent, ReceiptRecorded, decode_event, encode_event

_QUERIES = {
    "messages": (
        "SELECT kafka_offset, conversation_id, message_id, sender_id, sender_device, client_msg_id, kind,"
        " body, media, epoch_ms(ts), v FROM read_parquet($paths)"
    ),
    "membership": "SELECT kafka_offset, event FROM read_parquet($paths)",
    "receipts": (
        "SELECT kafka_offset, conversation_id, user_id, device_id, message_id, status, epoch_ms(ts), v"
        " FROM read_parquet($paths)"
    ),
}


def _message(row: tuple[Any, ...]) -> ChatEvent:
    _, cid, mid, sender, device, cmid, kind, body, media, ts, v = row
    return MessageSent(
        conversation_id=cid,
        message_id=mid,
        sender_id=sender,
        sender_device=device,
        client_msg_id=cmid,
        kind=kind,
        body=body,
        media=MediaRef(**orjson.loads(media)) if media else None,
        ts=ts,
        v=v,
    )


def _receipt(row: tuple[Any, ...]) -> ChatEvent:
    _, cid, uid, device, mid, status, ts, v = row
    return ReceiptRecorded(
        conversation_id=cid, user_id=uid, device_id=device, message_id=mid, status=status, ts=ts, v=v
    )


def _membership(row: tuple[Any, ...]) -> ChatEvent:
    return decode_event(row[1])


_BUILD = {"messages": _message, "membership": _membership, "receipts": _receipt}


def count(reader: ArchiveReader, manifest: Manifest) -> int:
    """How many archived events replay will read (unreadable ones excluded)."""
    return sum(f.rows for f in manifest.files.values() if f.table in _BUILD)


def archived_events(
    reader: ArchiveReader, manifest: Manifest, partition: int, *, batch: int = 5_000
) -> Iterator[list[tuple[int, ChatEvent]]]:
    """``(offset, event)`` of ``partition``, in offset order, in lists of up to ``batch``.
    The caller holds the archive's writer lock or tolerates a concurrent compaction (a file
    listed here may then be gone: run replay while no compaction runs)."""
    streams = []
    cursors = []
    for table, query in _QUERIES.items():
        paths = reader.paths(manifest, table)
        if not paths:
            continue
        cur = reader.cursor()
        cursors.append(cur)
        cur.execute(
            f"{query} WHERE kafka_partition = $p ORDER BY kafka_offset", {"paths": paths, "p": partition}
        )
        streams.append(_rows(cur, table))
    try:
        out: list[tuple[int, ChatEvent]] = []
        for offset, table, row in heapq.merge(*streams, key=lambda item: item[0]):
            out.append((offset, _BUILD[table](row)))
            if len(out) >= batch:
                yield out
                out = []
        if out:
            yield out
    finally:
        for cur in cursors:
            cur.close()


def _rows(cur: duckdb.DuckDBPyConnection, table: str) -> Iterator[tuple[int, str, tuple[Any, ...]]]:
    while rows := cur.fetchmany(10_000):
        for row in rows:
            yield row[0], table, row


def archived_between(
    reader: ArchiveReader, conversation_id: str, partition: int, low: int, high: int, limit: int
) -> list[tuple[int, ChatEvent]]:
    """Up to ``limit`` archived events of one conversation with ``low < offset <= high`` in
    ``partition``, in offset order (what ``/v1/sync`` reads below the prune horizon)."""

    def run(manifest: Manifest | None) -> list[tuple[int, ChatEvent]]:
        found: list[tuple[int, str, tuple[Any, ...]]] = []
        for table, query in _QUERIES.items():
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
        return [(offset, _BUILD[table](row)) for offset, table, row in found[:limit]]

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
