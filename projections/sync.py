"""``/v1/sync``: what a device missed, read from a log of every conversation event kept in log
order (the read model behind it, and the stage that writes it: ``projections.sync_log``).

**The cursor** is a position in the log: for each partition of the conversation topic, the
offset up to which the device has everything of its conversations. A conversation lives on one
partition, and the persist worker applies each partition in offset order, so "everything after
offset X in partition P" is exact. Message ids cannot serve: they are taken when a gateway
accepts a send, and a send that was slow to reach the log (a retry, a slow gateway) is appended
*after* messages with higher ids. A cursor of ids would skip it; a cursor of offsets sees it,
because its offset is higher than any already returned.

**The watermark**: a sync never returns events beyond ``sync_watermarks`` (per partition, the
offset up to which the worker has applied every event to every read model, this one last).
Events of one batch are written concurrently, so without it a sync could see offset 105 while
103 is still being written, and step past 103.

**The heads**: per conversation, its highest offset, written with the log rows (before the
watermark moves). A sync reads the log of only the conversations whose head is past the cursor,
so a user in a thousand quiet conversations costs a few head queries, not a thousand reads.

A device that connects its WebSocket first and then syncs misses nothing it is pushed after
the socket was subscribed. What was pushed before is at or below the watermark only once the
persist worker has applied it, and pushes come from the deliver worker, which can be ahead by
seconds: such a message comes in a later sync (the SDK's follow-up syncs, docs/sdk.md).
Duplicates are dropped by ``message_id``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from events import (
    ChatEvent,
    EncryptionEnabled,
    GroupEvent,
    MessageSent,
    ReceiptRecorded,
    decode_event,
    dm_members,
)
from events.errors import Invalid, Unavailable
from projections.wire import message_object

PRUNE_RETRIES = 5


# -- cursors ---------------------------------------------------------------------------------
def encode_cursor(positions: dict[int, int]) -> str:
    text = ",".join(f"{p}:{o}" for p, o in sorted(positions.items()) if o >= 0)
    return "1." + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, partitions: int) -> dict[int, int]:
    try:
        version, _, body = cursor.partition(".")
        if version != "1":
            raise ValueError(version)
        text = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True).decode()
        positions = {}
        for part in filter(None, text.split(",")):
            p, o = part.split(":")
            positions[int(p)] = int(o)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid("since is not a cursor this server returned") from exc
    if any(p < 0 or p >= partitions or o < 0 for p, o in positions.items()):
        raise Invalid("since is not a cursor this server returned")
    return positions


# -- the query -------------------------------------------------------------------------------
@dataclass
class SyncPage:
    messages: list[dict[str, Any]] = field(default_factory=list)
    receipts: list[dict[str, Any]] = field(default_factory=list)
    conversations: list[dict[str, Any]] = field(default_factory=list)
    cursor: str = ""
    has_more: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "receipts": self.receipts,
            "conversations": self.conversations,
            "cursor": self.cursor,
            "has_more": self.has_more,
        }


class SyncLogReader(Protocol):
    async def watermarks(self) -> dict[int, int]: ...
    async def heads(self, conversation_ids: Sequence[str]) -> dict[str, int]: ...
    async def between(
        self, conversation_id: str, low: int, high: int, limit: int
    ) -> list[tuple[int, bytes]]: ...
    async def user_changes(
        self, user_id: str, partition: int, low: int, high: int
    ) -> list[tuple[int, str, str]]: ...


class ColdLog(Protocol):
    """The archive standing in for the log rows ``tidings archive prune`` removed."""

    def pruned_below(self) -> dict[int, int]:
        """Per partition, the offset below which the conversation log may hold nothing (the
        archive holds it all). Read again after a read: a prune that started meanwhile
        changes it."""

    async def between(
        self, conversation_id: str, partition: int, low: int, high: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """Up to ``limit`` archived events of the conversation, ``low < offset <= high``,
        ascending, encoded as in the log."""


@dataclass(frozen=True)
class SyncContext:
    """What a sync reads: the log, and the read models that describe conversations."""

    log: SyncLogReader
    partitions: int
    partition_of: Callable[[str], int]
    conversation_ids: Callable[[str], Awaitable[set[str]]]
    # the conversation as the user sees it in the inbox, or None when they have no row
    describe: Callable[[str, str], Awaitable[dict[str, Any] | None]]
    # a group's current object (title, member_count) for one who left it, or None
    group_row: Callable[[str], Awaitable[Any | None]]
    fanout_threshold: int
    cold: ColdLog | None = None
    # whether a conversation is end-to-end encrypted (the object of a group one left says so)
    encrypted: Callable[[str], Awaitable[bool]] | None = None


def _receipt(event: ReceiptRecorded) -> dict[str, Any]:
    return {
        "conversation_id": event.conversation_id,
        "user_id": event.user_id,
        "message_id": str(event.message_id),
        "status": event.status,
    }


async def sync_since(user_id: str, since: str, *, limit: int, ctx: SyncContext) -> SyncPage:
    """Everything of the user's conversations after ``since``, up to ``limit`` events."""
    cursor = decode_cursor(since, ctx.partitions)
    marks, current = await asyncio.gather(ctx.log.watermarks(), ctx.conversation_ids(user_id))
    low = {p: cursor.get(p, -1) for p in range(ctx.partitions)}
    high = {p: marks.get(p, -1) for p in range(ctx.partitions)}
    until, membership = await _visible(user_id, current, low, high, ctx)

    # Only conversations with something after the cursor are read. A head is written before
    # the watermark moves past it, so every event at or below ``high`` is at or below its
    # conversation's head; a conversation without a head row is read to be sure.
    heads = await ctx.log.heads(sorted(until))
    cids = sorted(c for c in until if c not in heads or heads[c] > low[ctx.partition_of(c)])
    pages = await _read_all(ctx, cids, low, until, limit)
    taken, new_cursor, has_more = _take(ctx, cids, pages, low, high, limit)

    page = SyncPage(cursor=encode_cursor(new_cursor), has_more=has_more)
    changed = {
        cid: change
        for cid, (offset, change) in membership.items()
        if offset <= new_cursor[ctx.partition_of(cid)]
    }
    await _fill(page, user_id, taken, changed, ctx)
    return page


async def _visible(
    user_id: str, current: set[str], low: dict[int, int], high: dict[int, int], ctx: SyncContext
) -> tuple[dict[str, int], dict[str, tuple[int, str]]]:
    """Up to which offset the user may see each conversation: all of it while a member; up to
    the removal for one they left (unless they came back). With it, the user's last
    membership change in each conversation in ``(low, high]``, as ``(offset, change)``."""
    changes = await asyncio.gather(
        *(ctx.log.user_changes(user_id, p, low[p], high[p]) for p in range(ctx.partitions))
    )
    until: dict[str, int] = {cid: high[ctx.partition_of(cid)] for cid in current}
    membership: dict[str, tuple[int, str]] = {}
    for per_partition in changes:
        for offset, cid, change in per_partition:  # ascending: the last change wins
            membership[cid] = (offset, change)
            if change == "removed" and cid not in current:
                until[cid] = offset
    return until, membership


def _take(
    ctx: SyncContext,
    cids: list[str],
    pages: list[list[tuple[int, bytes]]],
    low: dict[int, int],
    high: dict[int, int],
    limit: int,
) -> tuple[list[tuple[str, ChatEvent]], dict[int, int], bool]:
    """The events the page holds (up to ``limit``, partition by partition in offset order),
    the cursor after them and whether more are left."""
    # Per partition: the events of its conversations in offset order, up to the highest offset
    # below which nothing can be missing (a conversation that filled its page may hold more).
    by_partition: dict[int, list[tuple[int, str, bytes]]] = {}
    safe = dict(high)
    for cid, rows in zip(cids, pages, strict=True):
        p = ctx.partition_of(cid)
        by_partition.setdefault(p, []).extend((o, cid, raw) for o, raw in rows)
        if len(rows) >= limit:
            safe[p] = min(safe[p], rows[-1][0])

    taken: list[tuple[str, ChatEvent]] = []
    new_cursor = dict(low)
    has_more = False
    for p in range(ctx.partitions):
        events = sorted(e for e in by_partition.get(p, []) if e[0] <= safe[p])
        room = limit - len(taken)
        if len(events) > room:
            events = events[:room]
            has_more = True
            if events:
                new_cursor[p] = events[-1][0]
        else:
            new_cursor[p] = max(low[p], safe[p])
            has_more = has_more or safe[p] < high[p]
        taken += [(cid, decode_event(raw)) for _, cid, raw in events]
    return taken, new_cursor, has_more


async def _read_all(
    ctx: SyncContext, cids: list[str], low: dict[int, int], until: dict[str, int], limit: int
) -> list[list[tuple[int, bytes]]]:
    """Each conversation's events in ``(low, until]``, up to ``limit``: from the archive below
    the prune horizon, from the conversation log above it. A prune that moved the horizon
    while reading may have removed rows already read as missing: read again."""
    cold = ctx.cold
    if cold is None:
        return await asyncio.gather(
            *(ctx.log.between(cid, low[ctx.partition_of(cid)], until[cid], limit) for cid in cids)
        )

    async def read(cold: ColdLog, cid: str, horizon: dict[int, int]) -> list[tuple[int, bytes]]:
        p = ctx.partition_of(cid)
        below = horizon.get(p, 0)
        rows: list[tuple[int, bytes]] = []
        if low[p] < below - 1:
            rows = await cold.between(cid, p, low[p], min(until[cid], below - 1), limit)
        if len(rows) < limit and until[cid] >= below:
            rows += await ctx.log.between(cid, max(low[p], below - 1), until[cid], limit - len(rows))
        return rows

    for _ in range(PRUNE_RETRIES):
        horizon = cold.pruned_below()
        pages = await asyncio.gather(*(read(cold, cid, horizon) for cid in cids))
        if cold.pruned_below() == horizon:
            return pages
    raise Unavailable("the sync log is being pruned; try again")


async def _fill(
    page: SyncPage,
    user_id: str,
    taken: list[tuple[str, ChatEvent]],
    membership: dict[str, str],
    ctx: SyncContext,
) -> None:
    receipts: list[ReceiptRecorded] = []
    touched: set[str] = set()
    for cid, event in taken:
        if isinstance(event, MessageSent):
            page.messages.append(message_object(event))
        elif isinstance(event, ReceiptRecorded):
            receipts.append(event)
        elif isinstance(event, (GroupEvent, EncryptionEnabled)):
            touched.add(cid)  # its object changed (a direct chat's: now encrypted)
    page.messages.sort(key=lambda m: (m["conversation_id"], int(m["message_id"])))
    # Receipts as the frames carry them: small conversations, and always the user's own (so
    # their other devices clear what was read).
    groups = {
        r.conversation_id for r in receipts if dm_members(r.conversation_id) is None and r.user_id != user_id
    }
    rows = dict(zip(groups, await asyncio.gather(*(ctx.group_row(g) for g in groups)), strict=True))
    for r in receipts:
        row = rows.get(r.conversation_id)
        large = row is not None and (row.member_count or 0) >= ctx.fanout_threshold
        if r.user_id == user_id or not large:
            page.receipts.append(_receipt(r))

    async def describe(cid: str, change: str) -> dict[str, Any] | None:
        if change == "removed":
            left = _left_group(cid, await ctx.group_row(cid))
            if left is not None and ctx.encrypted is not None:
                left["encrypted"] = await ctx.encrypted(cid)
            return left
        return await ctx.describe(user_id, cid)  # None: no longer a member (reported above)

    changed = sorted(touched | set(membership))
    changes = [membership.get(cid, "updated") for cid in changed]
    objects = await asyncio.gather(*(describe(c, ch) for c, ch in zip(changed, changes, strict=True)))
    page.conversations = [
        {"event": change, "conversation": obj}
        for change, obj in zip(changes, objects, strict=True)
        if obj is not None
    ]


def _left_group(cid: str, row: Any | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "conversation_id": cid,
        "kind": "group",
        "title": row.title,
        "member_count": row.member_count or 0,
        "last_message": None,
        "unread_count": 0,
        "last_activity_ts": row.last_ts or row.created_ts or 0,
        "encrypted": False,
    }


async def sync_start(
    user_id: str,
    *,
    ctx: SyncContext,
    inbox: Callable[[str], Awaitable[list[dict[str, Any]]]],
    read_marks: Callable[[str], Awaitable[dict[str, int]]],
    newest: Callable[[str], Awaitable[list[dict[str, Any]]]],
) -> SyncPage:
    """A device's starting state: every conversation (as ``added``), the newest messages of
    each, the user's read watermark in each, and the cursor to sync from next. The watermark is
    read first, so nothing at or below the cursor can be missing from the state."""
    marks = await ctx.log.watermarks()
    conversations, reads = await asyncio.gather(inbox(user_id), read_marks(user_id))
    histories = await asyncio.gather(*(newest(c["conversation_id"]) for c in conversations))
    page = SyncPage(cursor=encode_cursor({p: marks.get(p, -1) for p in range(ctx.partitions)}))
    page.conversations = [{"event": "added", "conversation": c} for c in conversations]
    page.messages = [m for history in histories for m in history]
    page.receipts = [
        {"conversation_id": cid, "user_id": user_id, "message_id": str(mid), "status": "read"}
        for cid, mid in sorted(reads.items())
        if mid
    ]
    return page
