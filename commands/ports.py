"""What the write side needs from the outside world, as small protocols."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from events import ChatEvent, MessageSent


class EventLog(Protocol):
    async def append(self, event: ChatEvent) -> None:
        """Append ``event`` to its topic, keyed by its entity id; return once it is durable
        (acks=all). Raises ``Unavailable`` when the log did not confirm it."""


@dataclass(frozen=True)
class SendRecord:
    """What an idempotency key maps to: the event it produced, and whether the log has it."""

    event: MessageSent
    appended: bool


class IdempotencyStore(Protocol):
    async def claim(self, sender_id: str, client_msg_id: str, record: SendRecord) -> SendRecord | None:
        """Record ``record`` for the key unless one exists. Returns ``None`` when this call
        recorded it, else the record already there. Atomic."""

    async def mark_appended(self, sender_id: str, client_msg_id: str, record: SendRecord) -> None:
        """Note that the record's event is known to be in the log."""


class IdGenerator(Protocol):
    def next_id(self) -> int: ...
