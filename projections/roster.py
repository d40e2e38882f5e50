"""The worker's view of who is in each conversation, for fan-out, kept in log order.

Direct conversations need no lookup (the id names both members). A group's entry is loaded from
the ``members`` read model the first time the worker meets the group, then kept current by the
membership events the worker applies, in log order: so a removed member gets no message after
the removal event, and an added member every message after the add event. For groups at or
above the fan-out threshold only the count is kept (their messages are published once).

Known limit: right after a worker (re)start, a group's first load reads the read model, which
the gateway's write-through may have moved a few events ahead of the worker's position.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import singledispatchmethod

from events import ChatEvent, GroupCreated, GroupRenamed, MemberRemoved, MembersAdded, dm_members


@dataclass
class Entry:
    member_count: int
    # None for large groups: their members are not listed here.
    members: set[str] | None = field(default=None)
    title: str | None = None
    encrypted: bool = False  # end-to-end encrypted (never turned off)


# (conversation_id, threshold) -> the group's entry as the read model has it
Loader = Callable[[str, int], Awaitable[Entry]]


class Roster:
    def __init__(self, load: Loader, *, threshold: int, capacity: int = 50_000) -> None:
        self._load = load
        self.threshold = threshold
        self._capacity = capacity
        self._entries: OrderedDict[str, Entry] = OrderedDict()

    async def recipients(self, conversation_id: str) -> list[str] | None:
        """Members to push to one by one, or ``None`` for a large group (publish once)."""
        members = dm_members(conversation_id)
        if members is not None:
            return list(dict.fromkeys(members))
        entry = await self._entry(conversation_id)
        if entry.members is None:
            return None
        return sorted(entry.members)

    async def group(self, conversation_id: str) -> Entry:
        """The group's current entry (count, title; members when small)."""
        return await self._entry(conversation_id)

    async def observe(self, event: ChatEvent) -> None:
        """Move the roster past ``event`` (idempotent: set operations and absolute counts)."""
        if isinstance(event, GroupCreated):
            ids = {m.user_id for m in event.members}
            listed = ids if len(ids) < self.threshold else None
            self._put(event.conversation_id, Entry(event.member_count, listed, event.title, event.encrypted))
        elif isinstance(event, GroupRenamed):
            (await self._entry(event.conversation_id)).title = event.title
        elif isinstance(event, (MembersAdded, MemberRemoved)):
            entry = await self._entry(event.conversation_id)
            self._update(event, entry)

    @singledispatchmethod
    def _update(self, event: ChatEvent, entry: Entry) -> None:
        return None

    @_update.register
    def _(self, event: MembersAdded, entry: Entry) -> None:
        entry.member_count = event.member_count
        if entry.members is not None:
            entry.members |= {m.user_id for m in event.members}
            if len(entry.members) >= self.threshold:
                entry.members = None  # crossed the threshold: from now on published once

    @_update.register
    def _(self, event: MemberRemoved, entry: Entry) -> None:
        entry.member_count = event.member_count
        if entry.members is not None:
            entry.members.discard(event.user_id)
        elif event.member_count < self.threshold:
            # Fell below the threshold: list the members again (after this event's removal,
            # which the write side has already written through).
            self._entries.pop(event.conversation_id, None)

    async def _entry(self, conversation_id: str) -> Entry:
        entry = self._entries.get(conversation_id)
        if entry is None:
            entry = await self._load(conversation_id, self.threshold)
            self._put(conversation_id, entry)
        else:
            self._entries.move_to_end(conversation_id)
        return entry

    def _put(self, conversation_id: str, entry: Entry) -> None:
        self._entries[conversation_id] = entry
        self._entries.move_to_end(conversation_id)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
