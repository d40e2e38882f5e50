"""The archive's tables: their Arrow schemas, how log entries become rows, and the Hive layout
``<table>/day=YYYY-MM-DD/part-<name>.parquet`` (``docs/archive.md`` is the reader's version).

Rows keep the Kafka partition and offset of their event, so the archive can stand in for the
log it replaces: replay orders by ``(kafka_partition, kafka_offset)``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

import orjson
import pyarrow as pa
import pyarrow.compute as pc

MESSAGES, MEMBERSHIP, RECEIPTS, UNREADABLE = "messages", "membership", "receipts", "unreadable"
TABLES = (MESSAGES, MEMBERSHIP, RECEIPTS, UNREADABLE)

_TS = pa.timestamp("ms", tz="UTC")
ENVELOPE = ("ciphertext", "algorithm", "session_id")
ENVELOPE_FIELDS = [pa.field(name, pa.string()) for name in ENVELOPE]
_LOG_FIELDS = [pa.field("kafka_partition", pa.int32(), False), pa.field("kafka_offset", pa.int64(), False)]

SCHEMAS: dict[str, pa.Schema] = {
    MESSAGES: pa.schema(
        [
            pa.field("conversation_id", pa.string(), False),
            pa.field("message_id", pa.int64(), False),
            pa.field("sender_id", pa.string(), False),
            pa.field("sender_device", pa.string(), False),
            pa.field("client_msg_id", pa.string(), False),
            pa.field("kind", pa.string(), False),
            pa.field("body", pa.string(), False),
            pa.field("media", pa.string()),  # the MediaRef as JSON, or null
            pa.field("ts", _TS, False),
            pa.field("v", pa.int16(), False),
            *_LOG_FIELDS,
            # End-to-end encrypted messages (kind 'encrypted', body empty): the client's
            # ciphertext as sent, and how to decrypt it; null for every other kind. Added after
            # the first files were written: readers read with DuckDB's union_by_name, so older
            # files give nulls.
            *ENVELOPE_FIELDS,
        ]
    ),
    MEMBERSHIP: pa.schema(
        [
            pa.field("conversation_id", pa.string(), False),
            pa.field("event_id", pa.int64(), False),
            pa.field("type", pa.string(), False),
            pa.field("actor_id", pa.string(), False),
            pa.field("ts", _TS, False),
            pa.field("title", pa.string()),
            pa.field("user_id", pa.string()),
            pa.field("role", pa.string()),
            pa.field("member_count", pa.int32()),
            pa.field(
                "members",
                pa.list_(pa.struct([pa.field("user_id", pa.string()), pa.field("role", pa.string())])),
            ),
            pa.field("v", pa.int16(), False),
            *_LOG_FIELDS,
            pa.field("event", pa.string(), False),  # the event's JSON as in the log
        ]
    ),
    RECEIPTS: pa.schema(
        [
            pa.field("conversation_id", pa.string(), False),
            pa.field("user_id", pa.string(), False),
            pa.field("device_id", pa.string(), False),
            pa.field("message_id", pa.int64(), False),
            pa.field("status", pa.string(), False),
            pa.field("ts", _TS, False),
            pa.field("v", pa.int16(), False),
            *_LOG_FIELDS,
        ]
    ),
    # Log entries that are not a known event (the live system dead-lettered them): kept as
    # bytes, so archiving loses nothing.
    UNREADABLE: pa.schema(
        [
            *_LOG_FIELDS,
            pa.field("ts", _TS, False),  # the Kafka record timestamp
            pa.field("key", pa.binary()),
            pa.field("value", pa.binary(), False),
            pa.field("error", pa.string(), False),
        ]
    ),
}

# Sort order inside each file: "newest 50 of one conversation" reads few row groups, because
# row-group statistics on conversation_id then prune the rest.
SORT_KEYS: dict[str, list[tuple[str, str]]] = {
    MESSAGES: [("conversation_id", "ascending"), ("message_id", "ascending")],
    MEMBERSHIP: [
        ("conversation_id", "ascending"),
        ("kafka_partition", "ascending"),
        ("kafka_offset", "ascending"),
    ],
    RECEIPTS: [
        ("conversation_id", "ascending"),
        ("kafka_partition", "ascending"),
        ("kafka_offset", "ascending"),
    ],
    UNREADABLE: [("kafka_partition", "ascending"), ("kafka_offset", "ascending")],
}

# The column whose min and max the manifest records per file (history prunes files by it).
ID_COLUMN = {
    MESSAGES: "message_id",
    MEMBERSHIP: "event_id",
    RECEIPTS: "message_id",
    UNREADABLE: "kafka_offset",
}

DAY_MS = 24 * 3600 * 1000


class LogEntry(Protocol):
    """One record of the event log: where it is, its record timestamp (ms), key and bytes. The
    Kafka source hands over the client's own record objects (making another object per event
    cost more than parsing it); ``Entry`` is one made by hand."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes: ...


class Entry(NamedTuple):
    """A ``LogEntry`` made by hand (fakes and tests)."""

    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes


def day_of(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d")


def file_path(table: str, day: str, name: str) -> str:
    """The file's path relative to the archive folder."""
    return f"{table}/day={day}/part-{name}.parquet"


def event_time(entry: LogEntry, data: dict[str, Any] | None) -> int:
    """An entry's time for the cutoff: the event's ``ts``, else the record's timestamp."""
    if data is not None and isinstance(data.get("ts"), int):
        return int(data["ts"])
    return entry.timestamp


def parse(entry: LogEntry) -> dict[str, Any] | None:
    try:
        data = orjson.loads(entry.value)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


_DAYS: dict[int, str] = {}


def _day(ts_ms: int) -> str:
    index = ts_ms // DAY_MS
    found = _DAYS.get(index)
    if found is None:
        found = _DAYS[index] = day_of(ts_ms)
    return found


# The current shape of the two events that make up nearly all of the log. They take a fast
# path that checks exactly what the catalogue's models check (keys, types, literals) without
# building a model; anything else (other versions, media, other types) goes through
# ``decode_event``, upcasters included.
_MESSAGE_KEYS = frozenset(
    (
        *("type", "v", "conversation_id", "message_id", "sender_id", "sender_device", "client_msg_id"),
        *("kind", "body", "media", "ts"),
    )
)
_RECEIPT_KEYS = frozenset(
    ("type", "v", "conversation_id", "user_id", "device_id", "message_id", "status", "ts")
)
_KINDS = frozenset(("text", "image", "video", "file"))
_STATUSES = frozenset(("delivered", "read"))


def _fast_message(d: dict[str, Any], p: int, o: int) -> tuple[Any, ...] | None:
    if d.keys() != _MESSAGE_KEYS or d["v"] != 1 or d["media"] is not None or d["kind"] not in _KINDS:
        return None
    cid, mid, sender, device, cmid, body, ts = (
        d["conversation_id"],
        d["message_id"],
        d["sender_id"],
        d["sender_device"],
        d["client_msg_id"],
        d["body"],
        d["ts"],
    )
    if type(mid) is not int or type(ts) is not int:
        return None
    if not (type(cid) is str and type(sender) is str and type(device) is str and type(cmid) is str):
        return None
    if type(body) is not str:
        return None
    return (cid, mid, sender, device, cmid, d["kind"], body, None, ts, 1, p, o, None, None, None, _day(ts))


def _fast_receipt(d: dict[str, Any], p: int, o: int) -> tuple[Any, ...] | None:
    if d.keys() != _RECEIPT_KEYS or d["v"] != 1 or d["status"] not in _STATUSES:
        return None
    cid, uid, device, mid, ts = d["conversation_id"], d["user_id"], d["device_id"], d["message_id"], d["ts"]
    if type(mid) is not int or type(ts) is not int:
        return None
    if not (type(cid) is str and type(uid) is str and type(device) is str):
        return None
    return (cid, uid, device, mid, d["status"], ts, 1, p, o, _day(ts))


class RowBuilder:
    """Turns log entries into rows per table (and day). Every entry is checked against the
    event catalogue (the fast path above, else ``decode_event``), so what the archive holds is
    what projections accept; what fails goes to ``unreadable``."""

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
        from archive.bulk import PREFIXES, parse_values

        n = len(entries)
        bulk: dict[str, tuple[list[int], pa.Table]] = {}
        groups: dict[str, list[int]] = {table: [] for table in PREFIXES}
        (messages, message_prefix), (receipts, receipt_prefix) = (
            (groups[t], PREFIXES[t]) for t in (MESSAGES, RECEIPTS)
        )
        for i, e in enumerate(entries):
            if e.value.startswith(message_prefix):
                messages.append(i)
            elif e.value.startswith(receipt_prefix):
                receipts.append(i)
        for table, where in groups.items():
            if len(where) >= _BULK_MIN:
                parsed = parse_values(table, [entries[i].value for i in where])
                if parsed is not None:
                    bulk[table] = (where, parsed)
        in_bulk = set().union(*(where for where, _ in bulk.values())) if bulk else set()
        rest: list[tuple[int, dict[str, Any] | None]] = [
            (i, parse(entries[i])) for i in range(n) if i not in in_bulk
        ]
        stop = n  # the first entry at or past the cutoff
        if cutoff_ms is not None:
            for where, parsed in bulk.values():
                late = pc.index(pc.greater_equal(parsed["ts"], cutoff_ms), True).as_py()
                if late >= 0:
                    stop = min(stop, where[late])
            for i, data in rest:
                if i >= stop:
                    break
                if event_time(entries[i], data) >= cutoff_ms:
                    stop = i
                    break
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
        self.count += 1
        if data is not None:
            kind = data.get("type")
            if kind == "message.sent":
                row = _fast_message(data, entry.partition, entry.offset)
                if row is not None:
                    self._messages.append(row)
                    return
            elif kind == "receipt.recorded":
                row = _fast_receipt(data, entry.partition, entry.offset)
                if row is not None:
                    self._rows[RECEIPTS].append(row)
                    return
        self._slow(entry)

    def _slow(self, entry: LogEntry) -> None:
        from events import GroupCreated, MembersAdded, MessageSent, ReceiptRecorded, decode_event
        from events.catalogue import _ConversationEvent

        p, o = entry.partition, entry.offset
        try:
            event = decode_event(entry.value)
        except ValueError as exc:
            self._unreadable(entry, f"undecodable: {exc}"[:2000])
            return
        if isinstance(event, MessageSent):
            media = orjson.dumps(event.media.model_dump()).decode() if event.media else None
            self._rows[MESSAGES].append(
                (
                    event.conversation_id,
                    event.message_id,
                    event.sender_id,
                    event.sender_device,
                    event.client_msg_id,
                    event.kind,
                    event.body,
                    media,
                    event.ts,
                    event.v,
                    p,
                    o,
                    event.ciphertext,
                    event.algorithm,
                    event.session_id,
                    _day(event.ts),
                )
            )
        elif isinstance(event, ReceiptRecorded):
            self._rows[RECEIPTS].append(
                (
                    event.conversation_id,
                    event.user_id,
                    event.device_id,
                    event.message_id,
                    event.status,
                    event.ts,
                    event.v,
                    p,
                    o,
                    _day(event.ts),
                )
            )
        elif isinstance(event, _ConversationEvent):
            members = (
                [{"user_id": m.user_id, "role": m.role} for m in event.members]
                if isinstance(event, GroupCreated | MembersAdded)
                else None
            )
            self._rows[MEMBERSHIP].append(
                (
                    event.conversation_id,
                    event.event_id,
                    event.type,
                    event.actor_id,
                    event.ts,
                    getattr(event, "title", None),
                    getattr(event, "user_id", None),
                    getattr(event, "role", None),
                    getattr(event, "member_count", None),
                    members,
                    event.v,
                    p,
                    o,
                    event.model_dump_json(),
                    _day(event.ts),
                )
            )
        else:  # pragma: no cover - a new event type must get a table here first
            self._unreadable(entry, f"no archive table for {type(event).__name__}")

    def _unreadable(self, entry: LogEntry, error: str) -> None:
        self._rows[UNREADABLE].append(
            (
                entry.partition,
                entry.offset,
                entry.timestamp,
                entry.key,
                entry.value,
                error,
                _day(entry.timestamp),
            )
        )

    def tables(self) -> Iterable[tuple[str, str, pa.Table]]:
        """``(table, day, rows sorted for reading)`` for every non-empty (table, day)."""
        for name in TABLES:
            rows = self._rows[name]
            parts = list(self._parts[name])
            days: list[pa.Array] = [_days_of(part["ts"]) for part in parts]
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


_BULK_MIN = 32  # fewer values than this are cheaper one by one
_POSITION = [("kafka_partition", "ascending"), ("kafka_offset", "ascending")]


def _days_of(ts: pa.ChunkedArray) -> pa.Array:
    """The UTC day (``YYYY-MM-DD``) of each timestamp (ms since the epoch; formatted once per
    day, not per row)."""
    index = pc.floor(pc.divide(pc.cast(ts, pa.int64()).cast(pa.float64()), float(DAY_MS)))
    index = pc.cast(index, pa.int64())
    distinct = pc.unique(index)
    names = pa.array([_day(int(d) * DAY_MS) for d in distinct.to_pylist()], pa.string())
    return pc.take(names, pc.index_in(index, value_set=distinct)).combine_chunks()
