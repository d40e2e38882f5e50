"""Read model ``messages`` (warm tier): every message in Cassandra, partitioned by
``(conversation_id, bucket)`` and clustered by ``message_id``.

Consumes ``MessageSent``. Writes are upserts keyed by ids from the event, so applying an event
twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import singledispatch
from typing import Any

import orjson

from events import ChatEvent, MessageSent, snowflake_ts
from projections.cql import Cql
from projections.wire import encrypted_object, message_object

NAME = "messages"

_INSERT_MESSAGE = (
    "INSERT INTO {ks}.messages (conversation_id, bucket, message_id, sender_id, sender_device,"
    " client_msg_id, kind, body, media, ts, ciphertext, algorithm, session_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_BUCKET = "INSERT INTO {ks}.conversation_buckets (conversation_id, bucket) VALUES (?, ?)"
_SELECT_BUCKETS = "SELECT bucket FROM {ks}.conversation_buckets WHERE conversation_id = ?"
_COLUMNS = (
    "message_id, sender_id, client_msg_id, kind, body, media, ts,"
    " ciphertext, algorithm, session_id, sender_device"
)
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
    media = orjson.dumps(event.media.model_dump()).decode() if event.media else None
    return [
        (
            _INSERT_MESSAGE,
            (
                event.conversation_id,
                bucket,
                event.message_id,
                event.sender_id,
                event.sender_device,
                event.client_msg_id,
                event.kind,
                event.body,
                media,
                event.ts,
                event.ciphertext,
                event.algorithm,
                event.session_id,
            ),
        ),
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
        return list(dict.fromkeys(s for event in events for s in statements(event, self._bucket_ms)))

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
            return [_row_object(conversation_id, row) for row in found]
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
        return [_row_object(conversation_id, row) for row in reversed(found)]


def _row_object(conversation_id: str, row: Any) -> dict[str, Any]:
    if row.kind == "encrypted":
        envelope = (row.ciphertext, row.algorithm, row.session_id, row.sender_device)
        return encrypted_object(
            row.message_id, conversation_id, row.sender_id, row.client_msg_id, envelope, row.ts
        )
    return {
        "message_id": str(row.message_id),
        "conversation_id": conversation_id,
        "sender_id": row.sender_id,
        "client_msg_id": row.client_msg_id,
        "kind": row.kind,
        "body": row.body,
        "media": orjson.loads(row.media) if row.media else None,
        "ts": row.ts,
    }


__all__ = ["NAME", "CassandraMessages", "bucket_of", "message_object", "statements"]


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
