"""In-memory fakes of the read-model stores, for unit tests. They apply events through the
same ``statements``/``deliveries`` functions as the real adapters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from events import ChatEvent, MessageSent, ReceiptRecorded, encode_event
from events.errors import Unavailable
from events.topics import is_conversation_event
from projections.delivery import pushes
from projections.membership import write_time
from projections.roster import Roster
from projections.sync_log import user_changes
from projections.wire import message_object


class MemoryMessages:
    name = "messages"

    def __init__(self) -> None:
        self.rows: dict[str, dict[int, dict[str, Any]]] = {}
        self.fail_next = 0

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise Unavailable("Cassandra down (fake)")
        for event in events:
            if isinstance(event, MessageSent):
                self.rows.setdefault(event.conversation_id, {})[event.message_id] = message_object(event)

    async def page(
        self, conversation_id: str, *, before: int | None, after: int | None, limit: int
    ) -> list[dict[str, Any]]:
        ids = sorted(self.rows.get(conversation_id, {}))
        if after is not None:
            chosen = [i for i in ids if i > after][:limit]
        else:
            chosen = [i for i in ids if before is None or i < before][-limit:]
        return [self.rows[conversation_id][i] for i in chosen]


class MemoryRecent:
    name = "recent"

    def __init__(self, size: int = 50, *, roster: Roster | None = None) -> None:
        self.size = size
        self._roster = roster
        self.cache: dict[str, dict[int, dict[str, Any]]] = {}
        self.published: list[tuple[str, bytes]] = []

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        for event in events:
            if isinstance(event, MessageSent):
                entries = self.cache.setdefault(event.conversation_id, {})
                entries[event.message_id] = message_object(event)
                for old in sorted(entries)[: -self.size]:
                    del entries[old]
            if self._roster is not None:
                self.published += [(p.channel, p.payload) for p in await pushes(event, self._roster)]

    async def newest(self, conversation_id: str, *, before: int | None, limit: int) -> list[dict[str, Any]]:
        entries = self.cache.get(conversation_id, {})
        ids = [i for i in sorted(entries) if before is None or i < before][-limit:]
        return [entries[i] for i in ids]

    async def all(self, conversation_id: str) -> list[dict[str, Any]]:
        entries = self.cache.get(conversation_id, {})
        return [entries[i] for i in sorted(entries)]


class ReceiptRow(NamedTuple):
    """One member's watermarks, as a row of the real ``receipts`` table reads (0: none)."""

    user_id: str
    delivered: int
    read: int


class MemoryReceipts:
    """The ``receipts`` read model in memory, with the real one's rule: each watermark keeps
    the write of the highest ``write_time`` of its message id (ties: the higher value), as
    Cassandra's ``USING TIMESTAMP`` cells do; a read moves ``delivered`` too."""

    name = "receipts"

    def __init__(self) -> None:
        # (conversation, user) -> {"delivered"|"read": (write time, message id)}
        self.cells: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        for event in events:
            if isinstance(event, MessageSent):
                self._write(event.conversation_id, event.sender_id, event.message_id, ("delivered", "read"))
            elif isinstance(event, ReceiptRecorded):
                columns = ("delivered",) if event.status == "delivered" else ("delivered", "read")
                self._write(event.conversation_id, event.user_id, event.message_id, columns)

    def _write(self, cid: str, user_id: str, message_id: int, columns: tuple[str, ...]) -> None:
        cells = self.cells.setdefault((cid, user_id), {})
        value = (write_time(message_id), message_id)
        for column in columns:
            cells[column] = max(cells.get(column, value), value)

    async def watermarks(self, conversation_id: str, user_id: str) -> tuple[int, int]:
        row = self._row(conversation_id, user_id)
        return (row.delivered, row.read) if row is not None else (0, 0)

    async def page(self, conversation_id: str, *, after: str, limit: int) -> list[ReceiptRow]:
        users = sorted(u for c, u in self.cells if c == conversation_id and u > after)
        rows = (self._row(conversation_id, u) for u in users[:limit])
        return [r for r in rows if r is not None]

    def _row(self, conversation_id: str, user_id: str) -> ReceiptRow | None:
        cells = self.cells.get((conversation_id, user_id))
        if cells is None:
            return None
        return ReceiptRow(user_id, cells.get("delivered", (0, 0))[1], cells.get("read", (0, 0))[1])


class MemorySyncLog:
    """The sync log in memory (``projections.sync_log``, ``projections.sync.SyncLogReader``):
    each conversation's events by log offset, its head, each user's joins and leaves, and each
    partition's applied watermark, moved (never back) after the rows of a batch. Tests may set
    ``marks`` lower to stand for a worker between its writes and its watermark."""

    name = "sync"

    def __init__(self) -> None:
        self.events: dict[str, dict[int, bytes]] = {}
        self.head: dict[str, int] = {}
        self.changes: dict[tuple[str, int], dict[int, tuple[str, str]]] = {}
        self.marks: dict[int, int] = {}

    async def apply_at(self, events: Sequence[tuple[int, int, ChatEvent]]) -> None:
        marks: dict[int, int] = {}
        for partition, offset, event in events:
            marks[partition] = max(marks.get(partition, -1), offset)
            if not is_conversation_event(event):
                continue
            cid = event.conversation_id
            self.events.setdefault(cid, {})[offset] = encode_event(event)
            self.head[cid] = max(self.head.get(cid, -1), offset)
            for uid, change in user_changes(event):
                self.changes.setdefault((uid, partition), {})[offset] = (cid, change)
        for partition, offset in marks.items():
            self.marks[partition] = max(self.marks.get(partition, -1), offset)

    async def watermarks(self) -> dict[int, int]:
        return dict(self.marks)

    async def heads(self, conversation_ids: Sequence[str]) -> dict[str, int]:
        return {c: self.head[c] for c in conversation_ids if c in self.head}

    async def between(self, conversation_id: str, low: int, high: int, limit: int) -> list[tuple[int, bytes]]:
        rows = self.events.get(conversation_id, {})
        return [(o, rows[o]) for o in sorted(rows) if low < o <= high][:limit]

    async def user_changes(
        self, user_id: str, partition: int, low: int, high: int
    ) -> list[tuple[int, str, str]]:
        rows = self.changes.get((user_id, partition), {})
        return [(o, *rows[o]) for o in sorted(rows) if low < o <= high]
