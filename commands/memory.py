"""In-memory fakes of the write-side ports, for unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace

from commands.ports import Conversation, SendRecord
from events import (
    ChatEvent,
    GroupCreated,
    GroupRenamed,
    MemberRemoved,
    MemberRoleChanged,
    MembersAdded,
    OwnershipTransferred,
    Role,
)
from events.errors import Unavailable


class MemoryEventLog:
    def __init__(self) -> None:
        self.events: list[ChatEvent] = []
        self.fail_next = 0

    async def append(self, event: ChatEvent) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise Unavailable("event log down (fake)")
        self.events.append(event)


class MemoryIdempotencyStore:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], SendRecord] = {}

    async def claim(self, sender_id: str, client_msg_id: str, record: SendRecord) -> SendRecord | None:
        existing = self.records.get((sender_id, client_msg_id))
        if existing is None:
            self.records[(sender_id, client_msg_id)] = record
        return existing

    async def mark_appended(self, sender_id: str, client_msg_id: str, record: SendRecord) -> None:
        if (sender_id, client_msg_id) in self.records:
            self.records[(sender_id, client_msg_id)] = record


class MemoryDirectory:
    """The membership read model, in memory, applied with the same rules as the real one."""

    def __init__(self) -> None:
        self.groups: dict[str, Conversation] = {}
        self.members: dict[str, dict[str, Role]] = {}

    async def conversation(self, conversation_id: str) -> Conversation | None:
        return self.groups.get(conversation_id)

    async def roles(self, conversation_id: str, user_ids: Sequence[str]) -> dict[str, Role]:
        members = self.members.get(conversation_id, {})
        return {u: members[u] for u in user_ids if u in members}

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        for event in events:
            if isinstance(event, GroupCreated):
                self.groups[event.conversation_id] = Conversation(
                    event.conversation_id, "group", event.title, event.member_count
                )
                self.members[event.conversation_id] = {m.user_id: m.role for m in event.members}
            elif isinstance(event, MembersAdded):
                self.members[event.conversation_id].update({m.user_id: m.role for m in event.members})
                self._count(event.conversation_id, event.member_count)
            elif isinstance(event, MemberRemoved):
                self.members[event.conversation_id].pop(event.user_id, None)
                self._count(event.conversation_id, event.member_count)
            elif isinstance(event, MemberRoleChanged):
                self.members[event.conversation_id][event.user_id] = event.role
            elif isinstance(event, OwnershipTransferred):
                self.members[event.conversation_id][event.user_id] = "owner"
                self.members[event.conversation_id][event.actor_id] = "admin"
            elif isinstance(event, GroupRenamed):
                info = self.groups[event.conversation_id]
                self.groups[event.conversation_id] = replace(info, title=event.title)

    def _count(self, conversation_id: str, count: int) -> None:
        self.groups[conversation_id] = replace(self.groups[conversation_id], member_count=count)


class MemoryLocks:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        async with self._locks.setdefault(name, asyncio.Lock()):
            yield
