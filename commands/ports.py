"""What the write side needs from the outside world, as small protocols."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from events import ChatEvent, MessageSent, Role


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

    async def withdraw(self, sender_id: str, client_msg_id: str, record: SendRecord) -> None:
        """Forget the key if it still holds ``record`` (the claim of a send refused after it was
        made: over its rate limit); a record written since is kept."""


class IdGenerator(Protocol):
    def next_id(self) -> int: ...


class ConversationInfo(Protocol):
    @property
    def conversation_id(self) -> str: ...
    @property
    def kind(self) -> str:
        """``direct`` or ``group``."""

    @property
    def title(self) -> str | None: ...
    @property
    def member_count(self) -> int: ...


@dataclass(frozen=True)
class Conversation:
    """A plain ``ConversationInfo``."""

    conversation_id: str
    kind: str
    title: str | None
    member_count: int


class Directory(Protocol):
    """The membership read model, as the write side needs it."""

    async def conversation(self, conversation_id: str) -> ConversationInfo | None:
        """The group's row, or ``None`` when no such group exists."""

    async def roles(self, conversation_id: str, user_ids: Sequence[str]) -> dict[str, Role]:
        """Roles of those of ``user_ids`` who are members (absent ones are not)."""

    async def encrypted(self, conversation_id: str) -> bool:
        """Whether the conversation is end-to-end encrypted (never turned off)."""

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        """Write membership events through, right after they are in the log, so the next
        command sees them; the worker applies the same events again, idempotently."""


class Locks(Protocol):
    def hold(self, name: str) -> AbstractAsyncContextManager[None]:
        """Hold the named lock for the block (across processes); raise ``Unavailable`` when it
        cannot be had in a few seconds."""
