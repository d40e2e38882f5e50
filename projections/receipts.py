"""Read model ``receipts``: each member's delivered and read watermarks per conversation.

Consumes ``ReceiptRecorded`` (and ``MessageSent``: a sender has read what they answer). Each
watermark is written with ``USING TIMESTAMP`` of its own message id, so the highest watermark
wins in whatever order writes arrive (redeliveries, replays, a late duplicate): watermarks never
move back, with no read-before-write. A read receipt also moves the inbox's ``read_up_to``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import singledispatch
from typing import Any

from events import ChatEvent, MessageSent, ReceiptRecorded
from projections.adapters.cql import Cql, distinct_writes
from projections.membership import Statement, write_time

NAME = "receipts"

_DELIVERED = (
    "UPDATE {ks}.receipts USING TIMESTAMP ? SET delivered = ? WHERE conversation_id = ? AND user_id = ?"
)
_READ = (
    "UPDATE {ks}.receipts USING TIMESTAMP ? SET delivered = ?, read = ?"
    " WHERE conversation_id = ? AND user_id = ?"
)
_INBOX_READ = (
    "UPDATE {ks}.user_conversations USING TIMESTAMP ? SET read_up_to = ?"
    " WHERE user_id = ? AND conversation_id = ?"
)
_SELECT_ONE = "SELECT delivered, read FROM {ks}.receipts WHERE conversation_id = ? AND user_id = ?"
_SELECT_PAGE = (
    "SELECT user_id, delivered, read FROM {ks}.receipts WHERE conversation_id = ? AND user_id > ? LIMIT ?"
)


@singledispatch
def statements(event: ChatEvent) -> list[Statement]:
    return []


@statements.register
def _(event: MessageSent) -> list[Statement]:
    # The sender has read everything up to what they send (their inbox row moves with it in
    # the membership model).
    wt = write_time(event.message_id)
    return [(_READ, (wt, event.message_id, event.message_id, event.conversation_id, event.sender_id))]


@statements.register
def _(event: ReceiptRecorded) -> list[Statement]:
    wt = write_time(event.message_id)
    cid, uid, mid = event.conversation_id, event.user_id, event.message_id
    if event.status == "delivered":
        return [(_DELIVERED, (wt, mid, cid, uid))]
    return [(_READ, (wt, mid, mid, cid, uid)), (_INBOX_READ, (wt, mid, uid, cid))]


class CassandraReceipts:
    name = NAME

    def __init__(self, cql: Cql) -> None:
        self._cql = cql

    def prepare(self) -> None:
        for cql in (_DELIVERED, _READ, _INBOX_READ, _SELECT_ONE, _SELECT_PAGE):
            self._cql.prepare(cql)

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        await self._cql.execute_all(await self.writes(events))

    async def writes(self, events: Sequence[ChatEvent]) -> list[Statement]:
        """The upserts ``events`` cause, deduplicated."""
        return distinct_writes(events, statements)

    async def watermarks(self, conversation_id: str, user_id: str) -> tuple[int, int]:
        """``(delivered, read)``, 0 where none."""
        rows = await self._cql.execute(_SELECT_ONE, (conversation_id, user_id))
        if not rows:
            return 0, 0
        return rows[0].delivered or 0, rows[0].read or 0

    async def page(self, conversation_id: str, *, after: str, limit: int) -> list[Any]:
        return await self._cql.execute(_SELECT_PAGE, (conversation_id, after, limit))
