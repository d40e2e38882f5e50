"""Read model ``messages`` (warm tier): every message in Cassandra, partitioned by
``(conversation_id, bucket)`` and clustered by ``message_id``.

Consumes ``MessageSent``. Writes are upserts keyed by ids from the event, so applying an event
twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import singledispatch
from typing import Any

from events import ChatEvent, MessageSent, snowflake_ts
from events.rows import (
    ENVELOPE_COLUMNS,
    MESSAGE_COLUMNS,
    MESSAGE_OBJECT_COLUMNS,
    envelope_row,
    message_object,
    message_row,
)
from projections.adapters.cql import Cql, distinct_writes

NAME = "messages"

_INSERT_MESSAGE = (
    f"INSERT INTO {{ks}}.messages ({', '.join((*MESSAGE_COLUMNS, *ENVELOPE_COLUMNS))}, bucket)"
    f" VALUES ({', '.join('?' * (len(MESSAGE_COLUMNS) + len(ENVELOPE_COLUMNS) + 1))})"
)
_INSERT_BUCKET = "INSERT INTO {ks}.conversation_buckets (conversation_id, bucket) VALUES (?, ?)"
_SELECT_BUCKETS = "SELECT bucket FROM {ks}.conversation_buckets WHERE conversation_id = ?"
_COLUMNS = ", ".join(MESSAGE_OBJECT_COLUMNS)
_NEWEST = f"SELECT {_COLUMNS} FROM {{ks}}.messages WHERE conversation_id = ? AND bucket = ? LIMIT ?"
_BEFORE = (
    f"SELECT {_COLUMNS} FROM {{ks}}.messages WHERE conversation_id = ? AND bucket = ?"
    " AND message_id < ? LIMIT ?"
)
_AFTER = (
    f"SELECT {_COLUMNS} FROM {{ks}}.messages WHERE conversation_id = ? AND bucket = ?"
    " AND message_id > ? ORDER BY message_id ASC LIMIT ?"
)


def bucket_of(message_id: int, bucket_ms: int) -> int:
    return snowflake_ts(message_id) // bucket_ms


@singledispatch
def statements(event: ChatEvent, bucket_ms: int) -> list[tuple[str, tuple[Any, ...]]]:
    """The upserts an event causes in this read model (none for events it ignores)."""
    return []


@statements.register
def _(event: MessageSent, bucket_ms: int) -> list[tuple[str, tuple[Any, ...]]]:
    bucket = bucket_of(event.message_id, bucket_ms)
    return [
        (_INSERT_MESSAGE, (*message_row(event), *envelope_row(event), bucket)),
        (_INSERT_BUCKET, (event.conversation_id, bucket)),
    ]


class CassandraMessages:
    name = NAME

    def __init__(self, cql: Cql, bucket_ms: int) -> None:
        self._cql = cql
        self._bucket_ms = bucket_ms

    def prepare(self) -> None:
        """Blocking: prepare every statement up front, at start-up."""
        for cql in (_INSERT_MESSAGE, _INSERT_BUCKET, _SELECT_BUCKETS, _NEWEST, _BEFORE, _AFTER):
            self._cql.prepare(cql)

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        """Upsert what ``events`` change. Raises ``Unavailable`` when Cassandra is down."""
        await self._cql.execute_all(await self.writes(events))

    async def writes(self, events: Sequence[ChatEvent]) -> list[tuple[str, tuple[Any, ...]]]:
        """The upserts ``events`` cause, deduplicated."""
        # Many messages of a conversation share one bucket row: write it once.
        return distinct_writes(events, lambda event: statements(event, self._bucket_ms))

    async def page(
        self, conversation_id: str, *, before: int | None, after: int | None, limit: int
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` messages in ascending ``message_id`` order: the oldest newer than
        ``after`` when given, else the newest older than ``before`` (or the newest of all)."""
        rows = await self._cql.execute(_SELECT_BUCKETS, (conversation_id,))
        buckets = [row.bucket for row in rows]  # newest first
        found: list[Any] = []
        if after is not None:
            start = bucket_of(after, self._bucket_ms)
            for bucket in reversed([b for b in buckets if b >= start]):
                found += await self._cql.execute(_AFTER, (conversation_id, bucket, after, limit - len(found)))
                if len(found) >= limit:
                    break
            return [message_object(conversation_id, row) for row in found]
        if before is not None:
            end = bucket_of(before, self._bucket_ms)
            buckets = [b for b in buckets if b <= end]
        for bucket in buckets:
            if before is None:
                found += await self._cql.execute(_NEWEST, (conversation_id, bucket, limit - len(found)))
            else:
                found += await self._cql.execute(
                    _BEFORE, (conversation_id, bucket, before, limit - len(found))
                )
            if len(found) >= limit:
                break
        return [message_object(conversation_id, row) for row in reversed(found)]


__all__ = ["NAME", "CassandraMessages", "bucket_of", "statements"]


_SENDERS_AFTER = (
    "SELECT sender_id FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND message_id > ? LIMIT ?"
)


async def count_unread(
    cql: Cql, bucket_ms: int, conversation_id: str, *, after: int, reader: str, cap: int
) -> int:
    """Messages newer than ``after`` that ``reader`` did not send, counting up to ``cap``."""
    rows = await cql.execute(_SELECT_BUCKETS, (conversation_id,))
    start = bucket_of(after, bucket_ms) if after else -1
    count = 0
    scanned = 0
    for row in rows:  # newest bucket first
        if row.bucket < start:
            break
        senders = await cql.execute(_SENDERS_AFTER, (conversation_id, row.bucket, after, 4 * cap))
        scanned += len(senders)
        count += sum(1 for s in senders if s.sender_id != reader)
        if count >= cap or scanned >= 4 * cap:
            break
    return min(count, cap)
