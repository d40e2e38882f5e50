"""The sync log: the persist worker's last stage, and the read model ``/v1/sync`` reads
(``projections.sync`` says why a cursor is a log position and what the watermark promises).

Per conversation, its events by log offset (``conversation_log``, bucketed by ``BUCKET_BITS``)
and its head offset; per user, the offsets where they joined or left a conversation
(``user_log``); per partition, the applied watermark, written only once every read model has
the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from events import ChatEvent, GroupCreated, MemberRemoved, MembersAdded, encode_event
from events.topics import is_conversation_event
from projections.adapters.cql import Cql
from projections.membership import Statement

NAME = "sync"
BUCKET_BITS = 20  # offsets per conversation_log bucket: 2^20

_LOG = "INSERT INTO {ks}.conversation_log (conversation_id, bucket, log_offset, event) VALUES (?, ?, ?, ?)"
_LOG_BUCKET = "INSERT INTO {ks}.conversation_log_buckets (conversation_id, bucket) VALUES (?, ?)"
_USER_LOG = (
    "INSERT INTO {ks}.user_log (user_id, log_partition, log_offset, conversation_id, change)"
    " VALUES (?, ?, ?, ?, ?)"
)
_HEAD = "UPDATE {ks}.conversation_heads USING TIMESTAMP ? SET head = ? WHERE conversation_id = ?"
_WATERMARK = "UPDATE {ks}.sync_watermarks USING TIMESTAMP ? SET applied = ? WHERE log_partition = ?"
_SELECT_WATERMARKS = "SELECT log_partition, applied FROM {ks}.sync_watermarks"
_SELECT_BUCKETS = (
    "SELECT bucket FROM {ks}.conversation_log_buckets"
    " WHERE conversation_id = ? AND bucket >= ? AND bucket <= ?"
)
_SELECT_LOG = (
    "SELECT log_offset, event FROM {ks}.conversation_log"
    " WHERE conversation_id = ? AND bucket = ? AND log_offset > ? AND log_offset <= ? LIMIT ?"
)
_SELECT_HEADS = "SELECT conversation_id, head FROM {ks}.conversation_heads WHERE conversation_id IN ?"
HEADS_PER_QUERY = 100
BUCKETS_REMEMBERED = 200_000
_SELECT_USER_LOG = (
    "SELECT log_offset, conversation_id, change FROM {ks}.user_log"
    " WHERE user_id = ? AND log_partition = ? AND log_offset > ? AND log_offset <= ?"
)
STATEMENTS = (
    _LOG,
    _LOG_BUCKET,
    _USER_LOG,
    _HEAD,
    _WATERMARK,
    _SELECT_WATERMARKS,
    _SELECT_BUCKETS,
    _SELECT_LOG,
    _SELECT_HEADS,
)


def user_changes(event: ChatEvent) -> list[tuple[str, str]]:
    """``(user_id, "added"/"removed")`` of a membership event (nothing for other events)."""
    if isinstance(event, GroupCreated | MembersAdded):
        return [(m.user_id, "added") for m in event.members]
    if isinstance(event, MemberRemoved):
        return [(event.user_id, "removed")]
    return []


class CassandraSyncLog:
    """The persist worker's last stage: the conversation log, the user log, then the watermark.

    ``log_rows=False`` leaves out the conversation log's rows (replay, for events whose rows
    ``tidings archive prune`` removed: the archive serves those)."""

    name = NAME

    def __init__(self, cql: Cql, *, log_rows: bool = True) -> None:
        self._cql = cql
        self._log_rows = log_rows
        # Bucket rows this process has written: a busy conversation's row is written once, not
        # with every event. Nothing deletes them, so remembering is safe; bounded.
        self._buckets_written: set[tuple[str, int]] = set()

    def prepare(self) -> None:
        for cql in (*STATEMENTS, _SELECT_USER_LOG):
            self._cql.prepare(cql)

    async def apply_at(self, events: Sequence[tuple[int, int, ChatEvent]]) -> None:
        work = await self.writes_at(events)
        await self._cql.execute_all(work)
        self.written(work)
        # Only once the batch is written: the watermark promises everything up to it is there.
        await self._cql.execute_all(self.after_writes_at(events))

    async def writes_at(self, events: Sequence[tuple[int, int, ChatEvent]]) -> list[Statement]:
        """The log rows of ``events``, deduplicated, but the bucket rows this process has
        written already (``written``)."""
        return self._writes(events, self._buckets_written)

    def written(self, work: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Note the bucket rows among ``work``, which is written now (by this stage or a caller
        that writes it with other read models' rows): later batches leave them out."""
        if len(self._buckets_written) > BUCKETS_REMEMBERED:
            self._buckets_written.clear()
        self._buckets_written.update((params[0], params[1]) for cql, params in work if cql == _LOG_BUCKET)

    def after_writes_at(self, events: Sequence[tuple[int, int, ChatEvent]]) -> list[Statement]:
        """The watermarks to write once every read model has ``events`` (never before)."""
        marks: dict[int, int] = {}
        for partition, offset, _ in events:
            marks[partition] = max(marks.get(partition, -1), offset)
        return [(_WATERMARK, (offset + 1, offset, p)) for p, offset in marks.items()]

    def _writes(
        self, events: Sequence[tuple[int, int, ChatEvent]], written: AbstractSet[tuple[str, int]]
    ) -> list[Statement]:
        """The rows of ``events``, with the log bucket rows not in ``written``."""
        work: list[Statement] = []
        heads: dict[str, int] = {}
        buckets: set[tuple[str, int]] = set()
        for partition, offset, event in events:
            if not is_conversation_event(event):
                continue
            cid = event.conversation_id
            heads[cid] = max(heads.get(cid, -1), offset)
            bucket = offset >> BUCKET_BITS
            if self._log_rows:
                work.append((_LOG, (cid, bucket, offset, encode_event(event))))
            if (cid, bucket) not in written:
                buckets.add((cid, bucket))
            work += [
                (_USER_LOG, (uid, partition, offset, cid, change)) for uid, change in user_changes(event)
            ]
        work += [(_LOG_BUCKET, key) for key in sorted(buckets)]
        work += [(_HEAD, (offset + 1, offset, cid)) for cid, offset in heads.items()]
        return list(dict.fromkeys(work))

    # -- queries -------------------------------------------------------------------------
    async def watermarks(self) -> dict[int, int]:
        return {r.log_partition: r.applied for r in await self._cql.execute(_SELECT_WATERMARKS)}

    async def heads(self, conversation_ids: Sequence[str]) -> dict[str, int]:
        """The highest log offset of each conversation that has a head row."""
        chunks = [
            list(conversation_ids[i : i + HEADS_PER_QUERY])
            for i in range(0, len(conversation_ids), HEADS_PER_QUERY)
        ]
        results = await asyncio.gather(*(self._cql.execute(_SELECT_HEADS, (chunk,)) for chunk in chunks))
        return {r.conversation_id: r.head for rows in results for r in rows}

    async def between(self, conversation_id: str, low: int, high: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` events of the conversation with ``low < offset <= high``, ascending."""
        if high <= low:
            return []
        first, last = (low + 1) >> BUCKET_BITS, high >> BUCKET_BITS
        if first == last:
            buckets = [first]
        else:
            rows = await self._cql.execute(_SELECT_BUCKETS, (conversation_id, first, last))
            buckets = sorted(r.bucket for r in rows)
        out: list[tuple[int, bytes]] = []
        for bucket in buckets:
            rows = await self._cql.execute(
                _SELECT_LOG, (conversation_id, bucket, low, high, limit - len(out))
            )
            out += [(r.log_offset, r.event) for r in rows]
            if len(out) >= limit:
                break
        return out

    async def user_changes(
        self, user_id: str, partition: int, low: int, high: int
    ) -> list[tuple[int, str, str]]:
        """``(offset, conversation_id, "added"/"removed")`` of the user in ``(low, high]``."""
        if high <= low:
            return []
        rows = await self._cql.execute(_SELECT_USER_LOG, (user_id, partition, low, high))
        return [(r.log_offset, r.conversation_id, r.change) for r in rows]
