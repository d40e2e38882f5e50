"""The archive's tables: their Arrow schemas, the log entries they are made from, and the Hive layout
``<table>/day=YYYY-MM-DD/part-<name>.parquet`` (``docs/archive.md`` is the reader's version).

Rows keep the Kafka partition and offset of their event, so the archive can stand in for the
log it replaces: replay orders by ``(kafka_partition, kafka_offset)``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from events.rows import ENVELOPE_COLUMNS

MESSAGES, MEMBERSHIP, RECEIPTS, UNREADABLE = "messages", "membership", "receipts", "unreadable"
TABLES = (MESSAGES, MEMBERSHIP, RECEIPTS, UNREADABLE)

_TS = pa.timestamp("ms", tz="UTC")
ENVELOPE_FIELDS = [pa.field(name, pa.string()) for name in ENVELOPE_COLUMNS]
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


def sql_columns(columns: tuple[str, ...]) -> str:
    """A DuckDB select list of ``columns`` with ``ts`` back in Unix ms, as events carry it."""
    return ", ".join("epoch_ms(ts) AS ts" if c == "ts" else c for c in columns)


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


_DAY_NAMES: dict[int, str] = {}


def day(ts_ms: int) -> str:
    """``day_of``, formatted once per day."""
    index = ts_ms // DAY_MS
    found = _DAY_NAMES.get(index)
    if found is None:
        found = _DAY_NAMES[index] = day_of(ts_ms)
    return found


def days_of(ts: pa.ChunkedArray) -> pa.Array:
    """The UTC day (``YYYY-MM-DD``) of each timestamp (ms since the epoch; formatted once per
    day, not per row)."""
    index = pc.floor(pc.divide(pc.cast(ts, pa.int64()).cast(pa.float64()), float(DAY_MS)))
    index = pc.cast(index, pa.int64())
    distinct = pc.unique(index)
    names = pa.array([day(int(d) * DAY_MS) for d in distinct.to_pylist()], pa.string())
    return pc.take(names, pc.index_in(index, value_set=distinct)).combine_chunks()
