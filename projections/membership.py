"""Read models ``conversations``, ``members`` and ``user_conversations`` (the inbox rows).

Consumes every group event, ``MessageSent`` and ``EncryptionEnabled`` (whose table,
``conversation_encryption``, is ``projections/encryption.py``'s). Every write carries
``USING TIMESTAMP`` taken from its event's Snowflake id, so the gateway's write-through and the
worker's later apply of the same event agree, and a late re-apply of an older event never
undoes a newer one (a removal stays removed, a join resets the newest-message columns it owns).

The gateway uses this model to authorize commands (``Directory``) and the worker to know whom
to fan out to (``load_roster``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from functools import singledispatch
from typing import Any

from events import (
    ChatEvent,
    DirectOpened,
    GroupCreated,
    GroupRenamed,
    Member,
    MemberRemoved,
    MemberRoleChanged,
    MembersAdded,
    MessageSent,
    OwnershipTransferred,
    Role,
    dm_members,
    snowflake_ts,
)
from projections import encryption
from projections.adapters.cql import Cql
from projections.encryption import EncryptionFlags
from projections.roster import Entry, Roster

NAME = "membership"
PREVIEW_CHARS = 100

Statement = tuple[str, tuple[Any, ...]]

_CONV_META = (
    "INSERT INTO {ks}.conversations (conversation_id, kind, title, owner_id, member_count, created_ts)"
    " VALUES (?, 'group', ?, ?, ?, ?) USING TIMESTAMP ?"
)
_CONV_COUNT = "UPDATE {ks}.conversations USING TIMESTAMP ? SET member_count = ? WHERE conversation_id = ?"
_CONV_TITLE = "UPDATE {ks}.conversations USING TIMESTAMP ? SET title = ? WHERE conversation_id = ?"
_CONV_OWNER = "UPDATE {ks}.conversations USING TIMESTAMP ? SET owner_id = ? WHERE conversation_id = ?"
_CONV_LAST = (
    "UPDATE {ks}.conversations USING TIMESTAMP ? SET kind = ?, last_message_id = ?, last_sender_id = ?,"
    " last_preview = ?, last_ts = ? WHERE conversation_id = ?"
)
_MEMBER = (
    "INSERT INTO {ks}.members (conversation_id, user_id, role, joined_ts) VALUES (?, ?, ?, ?)"
    " USING TIMESTAMP ?"
)
_MEMBER_ROLE = "UPDATE {ks}.members USING TIMESTAMP ? SET role = ? WHERE conversation_id = ? AND user_id = ?"
_MEMBER_DEL = "DELETE FROM {ks}.members USING TIMESTAMP ? WHERE conversation_id = ? AND user_id = ?"
_INBOX_JOIN = (
    "INSERT INTO {ks}.user_conversations (user_id, conversation_id, kind, joined_ts, last_message_id,"
    " last_sender_id, last_preview, last_ts) VALUES (?, ?, 'group', ?, null, null, null, ?) USING TIMESTAMP ?"
)
# Only the opener's row: the other side's inbox lists the chat once a message arrives.
_INBOX_OPEN = (
    "UPDATE {ks}.user_conversations USING TIMESTAMP ? SET kind = 'direct', joined_ts = ?"
    " WHERE user_id = ? AND conversation_id = ?"
)
_INBOX_DEL = "DELETE FROM {ks}.user_conversations USING TIMESTAMP ? WHERE user_id = ? AND conversation_id = ?"
_INBOX_LAST = (
    "UPDATE {ks}.user_conversations USING TIMESTAMP ? SET kind = ?, last_message_id = ?, last_sender_id = ?,"
    " last_preview = ?, last_ts = ? WHERE user_id = ? AND conversation_id = ?"
)
_INBOX_LAST_READ = (
    "UPDATE {ks}.user_conversations USING TIMESTAMP ? SET kind = ?, last_message_id = ?,"
    " last_sender_id = ?, last_preview = ?, last_ts = ?, read_up_to = ?"
    " WHERE user_id = ? AND conversation_id = ?"
)
_INBOX_READ = (
    "UPDATE {ks}.user_conversations USING TIMESTAMP ? SET read_up_to = ?"
    " WHERE user_id = ? AND conversation_id = ?"
)
_SELECT_CONV = (
    "SELECT conversation_id, kind, title, owner_id, member_count, created_ts, last_message_id,"
    " last_sender_id, last_preview, last_ts FROM {ks}.conversations WHERE conversation_id = ?"
)
_SELECT_ROLES = "SELECT user_id, role FROM {ks}.members WHERE conversation_id = ? AND user_id IN ?"
_SELECT_MEMBERS = "SELECT user_id, role FROM {ks}.members WHERE conversation_id = ? AND user_id > ? LIMIT ?"
_SELECT_INBOX = (
    "SELECT conversation_id, kind, joined_ts, last_message_id, last_sender_id, last_preview, last_ts,"
    " read_up_to FROM {ks}.user_conversations WHERE user_id = ?"
)
_SELECT_CONV_IDS = "SELECT conversation_id FROM {ks}.user_conversations WHERE user_id = ?"
_SELECT_INBOX_ONE = (
    "SELECT conversation_id, kind, joined_ts, last_message_id, last_sender_id, last_preview, last_ts,"
    " read_up_to FROM {ks}.user_conversations WHERE user_id = ? AND conversation_id = ?"
)
STATEMENTS = (
    _CONV_META,
    _CONV_COUNT,
    _CONV_TITLE,
    _CONV_OWNER,
    _CONV_LAST,
    _MEMBER,
    _MEMBER_ROLE,
    _MEMBER_DEL,
    _INBOX_JOIN,
    _INBOX_OPEN,
    _INBOX_DEL,
    _INBOX_LAST,
    _INBOX_LAST_READ,
    _INBOX_READ,
    _SELECT_CONV,
    _SELECT_ROLES,
    _SELECT_MEMBERS,
    _SELECT_INBOX,
    _SELECT_INBOX_ONE,
    _SELECT_CONV_IDS,
)


@dataclass(frozen=True)
class GroupInfo:
    conversation_id: str
    kind: str
    title: str | None
    member_count: int


def write_time(snowflake: int) -> int:
    """Cassandra write timestamp (µs) of an event: its ms, plus its sequence for ties."""
    return snowflake_ts(snowflake) * 1000 + (snowflake & 0xFFF) % 1000


def _joins(cid: str, members: Sequence[Member], ts: int, wt: int) -> list[Statement]:
    out: list[Statement] = []
    for m in members:
        out.append((_MEMBER, (cid, m.user_id, m.role, ts, wt)))
        out.append((_INBOX_JOIN, (m.user_id, cid, ts, ts, wt)))
    return out


@singledispatch
def statements(event: ChatEvent, recipients: list[str] | None) -> list[Statement]:
    """Upserts for ``event``; ``recipients`` are the members whose inbox rows carry the newest
    message (``None`` for large groups)."""
    return []


@statements.register
def _(event: GroupCreated, recipients: list[str] | None) -> list[Statement]:
    wt = write_time(event.event_id)
    cid = event.conversation_id
    owner = next(m.user_id for m in event.members if m.role == "owner")
    meta = (_CONV_META, (cid, event.title, owner, event.member_count, event.ts, wt))
    return [meta, *_joins(cid, event.members, event.ts, wt)]


@statements.register
def _(event: MembersAdded, recipients: list[str] | None) -> list[Statement]:
    wt = write_time(event.event_id)
    cid = event.conversation_id
    return [(_CONV_COUNT, (wt, event.member_count, cid)), *_joins(cid, event.members, event.ts, wt)]


@statements.register
def _(event: MemberRemoved, recipients: list[str] | None) -> list[Statement]:
    wt = write_time(event.event_id)
    cid = event.conversation_id
    return [
        (_CONV_COUNT, (wt, event.member_count, cid)),
        (_MEMBER_DEL, (wt, cid, event.user_id)),
        (_INBOX_DEL, (wt, event.user_id, cid)),
    ]


@statements.register
def _(event: MemberRoleChanged, recipients: list[str] | None) -> list[Statement]:
    return [(_MEMBER_ROLE, (write_time(event.event_id), event.role, event.conversation_id, event.user_id))]


@statements.register
def _(event: OwnershipTransferred, recipients: list[str] | None) -> list[Statement]:
    wt = write_time(event.event_id)
    cid = event.conversation_id
    return [
        (_MEMBER_ROLE, (wt, "owner", cid, event.user_id)),
        (_MEMBER_ROLE, (wt, "admin", cid, event.actor_id)),
        (_CONV_OWNER, (wt, event.user_id, cid)),
    ]


@statements.register
def _(event: GroupRenamed, recipients: list[str] | None) -> list[Statement]:
    return [(_CONV_TITLE, (write_time(event.event_id), event.title, event.conversation_id))]


@statements.register
def _(event: DirectOpened, recipients: list[str] | None) -> list[Statement]:
    return [(_INBOX_OPEN, (write_time(event.event_id), event.ts, event.actor_id, event.conversation_id))]


@statements.register
def _(event: MessageSent, recipients: list[str] | None) -> list[Statement]:
    wt = write_time(event.message_id)
    cid = event.conversation_id
    direct = dm_members(cid) is not None
    kind = "direct" if direct else "group"
    # An encrypted message has no preview: nothing derived from it is shown (nor is its
    # ciphertext, which would only look like noise).
    preview = None if event.kind == "encrypted" else event.body[:PREVIEW_CHARS]
    last = (event.message_id, event.sender_id, preview, event.ts)
    # Direct chats keep their newest message in the two inbox rows only; groups also in
    # `conversations`, which is where large groups' inboxes read it.
    out: list[Statement] = [] if direct else [(_CONV_LAST, (wt, kind, *last, cid))]
    out += [(_INBOX_LAST, (wt, kind, *last, uid, cid)) for uid in recipients or () if uid != event.sender_id]
    # Sending implies having read everything before (receipts move it too, never back). Written
    # whatever the roster says, so it never depends on the worker's view of the group.
    if recipients is not None and event.sender_id in recipients:
        out.append((_INBOX_LAST_READ, (wt, kind, *last, event.message_id, event.sender_id, cid)))
    else:
        out.append((_INBOX_READ, (wt, event.message_id, event.sender_id, cid)))
    return out


class CassandraMembership:
    name = NAME

    def __init__(
        self, cql: Cql, roster: Roster | None = None, *, flags: EncryptionFlags | None = None
    ) -> None:
        self._cql = cql
        # The worker passes its roster (whose view follows the log); the gateway needs none.
        self._roster = roster
        self._encryption = flags if flags is not None else EncryptionFlags(cql)

    @property
    def encryption_flags(self) -> EncryptionFlags:
        """This process's cache of the encryption flags (the gateway feeds it the broadcasts)."""
        return self._encryption

    def prepare(self) -> None:
        for cql in STATEMENTS:
            self._cql.prepare(cql)
        self._encryption.prepare()

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        """Write ``events`` (already in the log) through. The process remembers the encryption
        they turn on even if the write fails: the fact holds from the log, and a send judged by
        this process must see it at once (``EncryptionFlags``)."""
        try:
            await self._cql.execute_all(await self.writes(events))
        finally:
            self._encryption.note(events)

    async def writes(self, events: Sequence[ChatEvent]) -> list[Statement]:
        """The upserts ``events`` cause, in order, deduplicated; moves the roster past them."""
        work: list[Statement] = []
        for event in events:
            recipients: list[str] | None = None
            if self._roster is not None:
                # Idempotent: the push stage may have moved the roster past this batch already;
                # in a replay (no pushes) this is what moves it.
                await self._roster.observe(event)
            if isinstance(event, MessageSent):
                recipients = await self._recipients(event.conversation_id)
            work += statements(event, recipients)
            work += encryption.statements(event)
        return list(dict.fromkeys(work))

    async def _recipients(self, conversation_id: str) -> list[str] | None:
        if self._roster is not None:
            return await self._roster.recipients(conversation_id)
        members = dm_members(conversation_id)
        return list(dict.fromkeys(members)) if members else None

    # -- queries -------------------------------------------------------------------------
    async def conversation(self, conversation_id: str) -> GroupInfo | None:
        """The group's row (``None`` for unknown ids and for direct chats)."""
        rows = await self._cql.execute(_SELECT_CONV, (conversation_id,))
        if not rows or rows[0].kind != "group" or rows[0].member_count is None:
            return None
        row = rows[0]
        return GroupInfo(conversation_id, row.kind, row.title, row.member_count)

    async def conversation_row(self, conversation_id: str) -> Any | None:
        rows = await self._cql.execute(_SELECT_CONV, (conversation_id,))
        return rows[0] if rows else None

    async def encrypted(self, conversation_id: str) -> bool:
        """Whether the conversation is end-to-end encrypted (``projections/encryption.py``)."""
        return await self._encryption.encrypted(conversation_id)

    async def encrypted_of(self, conversation_ids: Sequence[str]) -> set[str]:
        """Those of ``conversation_ids`` that are end-to-end encrypted."""
        return await self._encryption.encrypted_of(conversation_ids)

    async def roles(self, conversation_id: str, user_ids: Sequence[str]) -> dict[str, Role]:
        if not user_ids:
            return {}
        rows = await self._cql.execute(_SELECT_ROLES, (conversation_id, list(dict.fromkeys(user_ids))))
        return {row.user_id: row.role for row in rows}

    async def members_page(self, conversation_id: str, *, after: str, limit: int) -> list[tuple[str, Role]]:
        rows = await self._cql.execute(_SELECT_MEMBERS, (conversation_id, after, limit))
        return [(row.user_id, row.role) for row in rows]

    async def inbox_rows(self, user_id: str) -> list[Any]:
        return await self._cql.execute_paged(_SELECT_INBOX, (user_id,))

    async def inbox_row(self, user_id: str, conversation_id: str) -> Any | None:
        rows = await self._cql.execute(_SELECT_INBOX_ONE, (user_id, conversation_id))
        return rows[0] if rows else None

    async def conversation_ids(self, user_id: str) -> set[str]:
        """Every conversation the user is in (direct chats once they hold a message, or once
        this user opened them)."""
        return {row.conversation_id for row in await self._cql.execute_paged(_SELECT_CONV_IDS, (user_id,))}

    async def groups_of(self, user_id: str) -> set[str]:
        return {row.conversation_id for row in await self.inbox_rows(user_id) if row.kind == "group"}

    async def load_roster(self, conversation_id: str, threshold: int) -> Entry:
        """The worker's ``Roster`` loader."""
        row, members, encrypted = await asyncio.gather(
            self.conversation_row(conversation_id),
            self._cql.execute(_SELECT_MEMBERS, (conversation_id, "", threshold)),
            self.encrypted(conversation_id),
        )
        count = row.member_count if row is not None and row.member_count is not None else 0
        listed = {m.user_id for m in members} if count < threshold else None
        return Entry(count, listed, row.title if row is not None else None, encrypted)
