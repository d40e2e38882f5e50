"""In-memory fakes of the write-side ports, for unit tests."""

from __future__ import annotations

from commands.ports import SendRecord
from events import ChatEvent
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
