"""Log entries into archive rows, per table and day. Every entry is checked against the event
catalogue, so what the archive holds is what projections accept; what fails goes to
``unreadable``. Three paths give the same rows: a whole fetch of current messages and receipts
parsed in bulk (``archive.bulk``), one current message or receipt from its JSON
(``archive.fast``), and any entry through the catalogue (``archive.slow``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from archive.bulk import PREFIXES, parse_values
from archive.fast import fast_message, fast_receipt
from archive.slow import slow_row
from archive.tables import (
    MESSAGES,
    RECEIPTS,
    SCHEMAS,
    SORT_KEYS,
    TABLES,
    LogEntry,
    days_of,
    event_time,
    parse,
)

_BULK_MIN = 32  # fewer values than this are cheaper one by one
_POSITION = [("kafka_partition", "ascending"), ("kafka_offset", "ascending")]
# entries parsed in bulk, per table: their indexes in the batch and their event columns
_Bulk = dict[str, tuple[list[int], pa.Table]]


class RowBuilder:
    """Collects the rows of the entries added, then hands them out sorted per (table, day)."""

    def __init__(self) -> None:
        self._rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLES}
        self._messages = self._rows[MESSAGES]
        # rows parsed in bulk (``add_batch``): the table's columns but the day, which is
        # computed from ``ts`` when the tables are built
        self._parts: dict[str, list[pa.Table]] = {t: [] for t in TABLES}
        self.count = 0

    def add_batch(self, entries: Sequence[LogEntry], cutoff_ms: int | None, room: int) -> tuple[int, bool]:
        """Add the entries of one partition, in offset order, up to the first whose time is at
        or past ``cutoff_ms`` and at most ``room`` of them; returns ``(how many were added,
        whether the cutoff stopped it)``. The same rows as ``add`` one by one, with messages
        and receipts of the current shape parsed in bulk (``archive.bulk``)."""
        n = len(entries)
        bulk = _parse_in_bulk(entries)
        in_bulk = set().union(*(where for where, _ in bulk.values())) if bulk else set()
        rest: list[tuple[int, dict[str, Any] | None]] = [
            (i, parse(entries[i])) for i in range(n) if i not in in_bulk
        ]
        stop = n if cutoff_ms is None else _first_late(entries, bulk, rest, cutoff_ms)
        cut = stop <= room and stop < n
        take = min(stop, room)
        for table, (where, parsed) in bulk.items():
            k = bisect.bisect_left(where, take)
            if k:
                offsets = [entries[i].offset for i in where[:k]]
                self._add_part(table, parsed.slice(0, k), entries[0].partition, offsets)
        for i, data in rest:
            if i >= take:
                break
            self.add(entries[i], data)
        return take, cut

    def _add_part(self, table: str, parsed: pa.Table, partition: int, offsets: list[int]) -> None:
        schema = SCHEMAS[table]
        position = {
            "kafka_partition": pa.array([partition] * len(offsets), pa.int32()),
            "kafka_offset": pa.array(offsets, pa.int64()),
        }
        # Columns the bulk shape has no key for (the envelope of encrypted messages, which
        # never take the bulk path) are null.
        columns = [
            parsed[f.name].cast(f.type)
            if f.name in parsed.column_names
            else position.get(f.name, pa.nulls(len(offsets), f.type))
            for f in schema
        ]
        self._parts[table].append(pa.Table.from_arrays(columns, schema=schema))
        self.count += len(offsets)

    def add(self, entry: LogEntry, data: dict[str, Any] | None) -> None:
        """Add one entry (``data``: its value as parsed by ``archive.tables.parse``)."""
        self.count += 1
        if data is not None:
            kind = data.get("type")
            if kind == "message.sent":
                row = fast_message(data, entry.partition, entry.offset)
                if row is not None:
                    self._messages.append(row)
                    return
            elif kind == "receipt.recorded":
                row = fast_receipt(data, entry.partition, entry.offset)
                if row is not None:
                    self._rows[RECEIPTS].append(row)
                    return
        table, row = slow_row(entry)
        self._rows[table].append(row)

    def tables(self) -> Iterable[tuple[str, str, pa.Table]]:
        """``(table, day, rows sorted for reading)`` for every non-empty (table, day)."""
        for name in TABLES:
            rows = self._rows[name]
            parts = list(self._parts[name])
            days: list[pa.Array] = [days_of(part["ts"]) for part in parts]
            if rows:
                schema = SCHEMAS[name]
                columns = list(zip(*rows, strict=True))
                days.append(pa.array(columns.pop(), pa.string()))
                parts.append(
                    pa.table(
                        [pa.array(col, f.type) for col, f in zip(columns, schema, strict=True)], schema=schema
                    )
                )
            if not parts:
                continue
            table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            day_column = pa.chunked_array(days, pa.string())
            # The log position last: duplicates of one event (a re-appended send) are sorted
            # the same way whichever path parsed them.
            keys = SORT_KEYS[name] + [k for k in _POSITION if k not in SORT_KEYS[name]]
            for day in sorted(pc.unique(day_column).to_pylist()):
                part = table.filter(pc.equal(day_column, day))
                yield name, day, part.sort_by(keys).combine_chunks()


def _parse_in_bulk(entries: Sequence[LogEntry]) -> _Bulk:
    """The entries that start like a current message or receipt, parsed a table at a time
    where there are enough of them and every one passes (else left to the per-entry paths)."""
    groups: dict[str, list[int]] = {table: [] for table in PREFIXES}
    (messages, message_prefix), (receipts, receipt_prefix) = (
        (groups[t], PREFIXES[t]) for t in (MESSAGES, RECEIPTS)
    )
    for i, e in enumerate(entries):
        if e.value.startswith(message_prefix):
            messages.append(i)
        elif e.value.startswith(receipt_prefix):
            receipts.append(i)
    bulk: _Bulk = {}
    for table, where in groups.items():
        if len(where) >= _BULK_MIN:
            parsed = parse_values(table, [entries[i].value for i in where])
            if parsed is not None:
                bulk[table] = (where, parsed)
    return bulk


def _first_late(
    entries: Sequence[LogEntry],
    bulk: _Bulk,
    rest: list[tuple[int, dict[str, Any] | None]],
    cutoff_ms: int,
) -> int:
    """The index of the first entry at or past the cutoff (``len(entries)`` if none)."""
    stop = len(entries)
    for where, parsed in bulk.values():
        late = pc.index(pc.greater_equal(parsed["ts"], cutoff_ms), True).as_py()
        if late >= 0:
            stop = min(stop, where[late])
    for i, data in rest:
        if i >= stop:
            break
        if event_time(entries[i], data) >= cutoff_ms:
            return i
    return stop
