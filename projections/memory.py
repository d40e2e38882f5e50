"""In-memory fakes of the read-model stores, for unit tests. They apply events through the
same ``statements``/``deliveries`` functions as the real adapters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from events import ChatEvent, MessageSent
from events.errors import Unavailable
from projections.delivery import pushes
from projections.roster import Roster
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
