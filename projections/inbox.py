"""The inbox query: a user's conversations, most recent activity first, built at read time.

Direct chats and groups below the fan-out threshold have their newest message in the user's
own row (written per member); larger groups have it once, in ``conversations``. The query takes
the newer of the two, so a group that crossed the threshold either way is still right. Unread
counts are counted from the user's read watermark at read time, never kept in counters, so a
replay gives them back exactly.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from typing import Any, Protocol

from events import dm_members
from events.errors import Invalid
from events.ids import EPOCH_MS, SEQUENCE_BITS, WORKER_BITS

UNREAD_CAP = 100


class InboxSource(Protocol):
    async def inbox_rows(self, user_id: str) -> list[Any]: ...
    async def inbox_row(self, user_id: str, conversation_id: str) -> Any | None: ...
    async def conversation_row(self, conversation_id: str) -> Any | None: ...
    async def encrypted_of(self, conversation_ids: Sequence[str]) -> set[str]:
        """Those of ``conversation_ids`` that are end-to-end encrypted."""


class UnreadCounter(Protocol):
    async def __call__(self, conversation_id: str, *, after: int, reader: str, cap: int) -> int: ...


def encode_cursor(activity_ts: int, conversation_id: str) -> str:
    return base64.urlsafe_b64encode(f"{activity_ts}:{conversation_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, cid = raw.split(":", 1)
        return int(ts), cid
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid("before is not a cursor this server returned") from exc


def _first_id_at(ts_ms: int) -> int:
    """The smallest message_id a message sent at ``ts_ms`` can have."""
    return max(ts_ms - EPOCH_MS, 0) << (WORKER_BITS + SEQUENCE_BITS)


async def inbox_page(
    user_id: str, *, before: str | None, limit: int, source: InboxSource, unread: UnreadCounter
) -> tuple[list[dict[str, Any]], str | None]:
    rows = await source.inbox_rows(user_id)
    groups = [r.conversation_id for r in rows if r.kind == "group"]
    meta = dict(zip(groups, await asyncio.gather(*(source.conversation_row(c) for c in groups)), strict=True))
    items = [_item(row, meta.get(row.conversation_id)) for row in rows]
    items.sort(key=lambda it: (it[0], it[1]["conversation_id"]), reverse=True)
    if before is not None:
        bound = decode_cursor(before)
        items = [it for it in items if (it[0], it[1]["conversation_id"]) < bound]
    page = items[:limit]
    encrypted = await source.encrypted_of([obj["conversation_id"] for _, obj, _ in page])
    for _, obj, _ in page:
        obj["encrypted"] = obj["conversation_id"] in encrypted
    counts = await asyncio.gather(
        *(
            unread(obj["conversation_id"], after=after, reader=user_id, cap=UNREAD_CAP)
            for _, obj, after in page
        )
    )
    for (_, obj, _), count in zip(page, counts, strict=True):
        obj["unread_count"] = count
    next_cursor = encode_cursor(page[-1][0], page[-1][1]["conversation_id"]) if len(items) > limit else None
    return [obj for _, obj, _ in page], next_cursor


async def one_conversation(
    user_id: str, conversation_id: str, *, source: InboxSource, unread: UnreadCounter
) -> dict[str, Any] | None:
    """The conversation as ``user_id`` sees it in the inbox; ``None`` when they have no row
    (a direct chat nobody wrote in yet)."""
    row = await source.inbox_row(user_id, conversation_id)
    if row is None:
        return None
    conv = await source.conversation_row(conversation_id) if row.kind == "group" else None
    _, obj, after = _item(row, conv)
    obj["encrypted"] = bool(await source.encrypted_of([conversation_id]))
    obj["unread_count"] = await unread(conversation_id, after=after, reader=user_id, cap=UNREAD_CAP)
    return obj


def _item(row: Any, conv: Any | None) -> tuple[int, dict[str, Any], int]:
    """(activity ts, conversation object, unread-after message id) for one inbox row."""
    last = (row.last_message_id, row.last_sender_id, row.last_preview, row.last_ts)
    if conv is not None and conv.last_message_id is not None and (last[0] or 0) < conv.last_message_id:
        last = (conv.last_message_id, conv.last_sender_id, conv.last_preview, conv.last_ts)
    if row.kind == "group":
        title, count = (conv.title, conv.member_count) if conv is not None else (None, 0)
    else:
        title, count = None, len(set(dm_members(row.conversation_id) or ()))
    activity = last[3] if last[3] is not None else (row.joined_ts or 0)
    joined_floor = _first_id_at(row.joined_ts) if row.kind == "group" and row.joined_ts else 0
    obj = {
        "conversation_id": row.conversation_id,
        "kind": row.kind,
        "title": title,
        "member_count": count,
        "last_message": None
        if last[0] is None
        else {"message_id": str(last[0]), "sender_id": last[1], "preview": last[2], "ts": last[3]},
        "unread_count": 0,
        "last_activity_ts": activity,
        "encrypted": False,  # set by the callers, from the encryption read model
    }
    read_up_to = max(row.read_up_to or 0, joined_floor)
    return activity, obj, read_up_to
