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

from archive.manifest import Manifest
from archive.reader import ArchiveReader
from archive.tables import sql_columns
from events import ChatEvent, decode_event
from events.rows import ENVELOPE_COLUMNS, MESSAGE_COLUMNS, RECEIPT_COLUMNS, message_from_row, receipt_from_row

QUERIES = {
    "messages": (
        f"SELECT kafka_offset, {sql_columns(MESSAGE_COLUMNS)}, v, {', '.join(ENVELOPE_COLUMNS)}"
        " FROM read_parquet($paths, union_by_name = true)"
    ),
    "membership": "SELECT kafka_offset, event FROM read_parquet($paths)",
    "receipts": f"SELECT kafka_offset, {sql_columns(RECEIPT_COLUMNS)}, v FROM read_parquet($paths)",
}


def _message(row: tuple[Any, ...]) -> ChatEvent:
    return message_from_row(row[1:10], row[10], row[11:14])


def _receipt(row: tuple[Any, ...]) -> ChatEvent:
    return receipt_from_row(row[1:-1], row[-1])


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
