"""The archive as a replay source: the archived events of one log partition, back as catalogue
events, in offset order (the order the live projector applied them). ``archive.sync_source``
reads the same tables for ``/v1/sync``.

Unreadable entries are left out: the live projector dead-lettered them too.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

import duckdb
import orjson

from archive.manifest import Manifest
from archive.reader import ArchiveReader
from events import ChatEvent, MediaRef, MessageSent, ReceiptRecorded, decode_event

QUERIES = {
    "messages": (
        "SELECT kafka_offset, conversation_id, message_id, sender_id, sender_device, client_msg_id, kind,"
        " body, media, epoch_ms(ts), v, ciphertext, algorithm, session_id"
        " FROM read_parquet($paths, union_by_name = true)"
    ),
    "membership": "SELECT kafka_offset, event FROM read_parquet($paths)",
    "receipts": (
        "SELECT kafka_offset, conversation_id, user_id, device_id, message_id, status, epoch_ms(ts), v"
        " FROM read_parquet($paths)"
    ),
}


def _message(row: tuple[Any, ...]) -> ChatEvent:
    _, cid, mid, sender, device, cmid, kind, body, media, ts, v, ciphertext, algorithm, session_id = row
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
        ciphertext=ciphertext,
        algorithm=algorithm,
        session_id=session_id,
    )


def _receipt(row: tuple[Any, ...]) -> ChatEvent:
    _, cid, uid, device, mid, status, ts, v = row
    return ReceiptRecorded(
        conversation_id=cid, user_id=uid, device_id=device, message_id=mid, status=status, ts=ts, v=v
    )


def _membership(row: tuple[Any, ...]) -> ChatEvent:
    return decode_event(row[1])


BUILD = {"messages": _message, "membership": _membership, "receipts": _receipt}


def count(reader: ArchiveReader, manifest: Manifest) -> int:
    """How many archived events replay will read (unreadable ones excluded)."""
    return sum(f.rows for f in manifest.files.values() if f.table in BUILD)


def archived_events(
    reader: ArchiveReader, manifest: Manifest, partition: int, *, batch: int = 5_000
) -> Iterator[list[tuple[int, ChatEvent]]]:
    """``(offset, event)`` of ``partition``, in offset order, in lists of up to ``batch``.
    The caller holds the archive's writer lock or tolerates a concurrent compaction (a file
    listed here may then be gone: run replay while no compaction runs)."""
    streams = []
    cursors = []
    for table, query in QUERIES.items():
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
            out.append((offset, BUILD[table](row)))
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
