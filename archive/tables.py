"""The archive's tables: their Arrow schemas, how log entries become rows, and the Hive layout
``<table>/day=YYYY-MM-DD/part-<name>.parquet`` (``docs/archive.md`` is the reader's version).

Rows keep the Kafka partition and offset of their event, so the archive can stand in for the
log it replaces: replay orders by ``(kafka_partition, kafka_offset)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

MESSAGES, MEMBERSHIP, RECEIPTS, UNREADABLE = "messages", "membership", "receipts", "unreadable"
TABLES = (MESSAGES, MEMBERSHIP, RECEIPTS, UNREADABLE)

_TS = pa.timestamp("ms", tz="UTC")
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


@dataclass(frozen=True)
class LogEntry:
    """One record of the event log: where it is, its record timestamp, key and bytes."""

    partition: int
    offset: int
    timestamp_ms: int
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
    return entry.timestamp_ms


def parse(entry: LogEntry) -> dict[str, Any] | None:
    try:
        data = orjson.loads(entry.value)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


@dataclass
class _Columns:
    names: Sequence[str]
    cols: dict[str, list[Any]] = field(default_factory=dict)
    days: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cols = {n: [] for n in self.names}

    def add(self, day: str, values: Sequence[Any]) -> None:
        self.days.append(day)
        for name, value in zip(self.names, values, strict=True):
            self.cols[name].append(value)


class RowBuilder:
    """Turns log entries into column lists per table (and day). Each entry is validated with
    the event catalogue's decoder, so what the archive holds is what projections accept."""

    def __init__(self) -> None:
        self._tables = {t: _Columns(SCHEMAS[t].names) for t in TABLES}
        self.count = 0

    def add(self, entry: LogEntry, data: dict[str, Any] | None) -> None:
        from events import GroupCreated, MembersAdded, MessageSent, ReceiptRecorded, decode_event
        from events.catalogue import _GroupEvent

        self.count += 1
        try:
            event = decode_event(entry.value)
        except ValueError as exc:
            self._unreadable(entry, f"undecodable: {exc}"[:2000])
            return
        p, o = entry.partition, entry.offset
        if isinstance(event, MessageSent):
            media = orjson.dumps(event.media.model_dump()).decode() if event.media else None
            self._tables[MESSAGES].add(
                day_of(event.ts),
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
                ),
            )
        elif isinstance(event, ReceiptRecorded):
            self._tables[RECEIPTS].add(
                day_of(event.ts),
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
                ),
            )
        elif isinstance(event, _GroupEvent):
            members = (
                [{"user_id": m.user_id, "role": m.role} for m in event.members]
                if isinstance(event, GroupCreated | MembersAdded)
                else None
            )
            self._tables[MEMBERSHIP].add(
                day_of(event.ts),
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
                ),
            )
        else:  # pragma: no cover - a new event type must get a table here first
            self._unreadable(entry, f"no archive table for {type(event).__name__}")

    def _unreadable(self, entry: LogEntry, error: str) -> None:
        self._tables[UNREADABLE].add(
            day_of(entry.timestamp_ms),
            (entry.partition, entry.offset, entry.timestamp_ms, entry.key, entry.value, error),
        )

    def tables(self) -> Iterable[tuple[str, str, pa.Table]]:
        """``(table, day, rows sorted for reading)`` for every non-empty (table, day)."""
        for name in TABLES:
            cols = self._tables[name]
            if not cols.days:
                continue
            table = pa.table(cols.cols, schema=SCHEMAS[name]).append_column(
                "_day", pa.array(cols.days, pa.string())
            )
            for day in sorted(set(cols.days)):
                part = table.filter(pc.equal(table["_day"], day)).drop_columns(["_day"])
                yield name, day, part.sort_by(SORT_KEYS[name])
