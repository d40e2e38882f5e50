"""The per-event slow path: any log entry, decoded by the event catalogue (upcasters
included), turned into the row of its archive table; what the catalogue refuses becomes an
``unreadable`` row, so archiving loses nothing. The columns of an event come from
``events.rows``, the one codec the warm tier and the archive's readers use too.
"""

from __future__ import annotations

from typing import Any

from archive.tables import MEMBERSHIP, MESSAGES, RECEIPTS, UNREADABLE, LogEntry, day
from events import ChatEvent, GroupCreated, MembersAdded, MessageSent, ReceiptRecorded, decode_event
from events.catalogue import _ConversationEvent
from events.rows import envelope_row, message_row, receipt_row


def slow_row(entry: LogEntry) -> tuple[str, tuple[Any, ...]]:
    """``(table, row)`` of ``entry``."""
    p, o = entry.partition, entry.offset
    try:
        event = decode_event(entry.value)
    except ValueError as exc:
        return UNREADABLE, unreadable_row(entry, f"undecodable: {exc}"[:2000])
    if isinstance(event, MessageSent):
        return MESSAGES, (*message_row(event), event.v, p, o, *envelope_row(event), day(event.ts))
    if isinstance(event, ReceiptRecorded):
        return RECEIPTS, (*receipt_row(event), event.v, p, o, day(event.ts))
    if isinstance(event, _ConversationEvent):
        return MEMBERSHIP, _membership_row(event, p, o)
    # a new event type must get a table here first
    return UNREADABLE, unreadable_row(entry, f"no archive table for {type(event).__name__}")


def _membership_row(event: ChatEvent, p: int, o: int) -> tuple[Any, ...]:
    assert isinstance(event, _ConversationEvent)
    members = (
        [{"user_id": m.user_id, "role": m.role} for m in event.members]
        if isinstance(event, GroupCreated | MembersAdded)
        else None
    )
    return (
        event.conversation_id,
        event.event_id,
        event.type,
        event.actor_id,
        event.ts,
        getattr(event, "title", None),
        getattr(event, "user_id", None),
        getattr(event, "role", None),
        getattr(event, "member_count", None),
        members,
        event.v,
        p,
        o,
        event.model_dump_json(),
        day(event.ts),
    )


def unreadable_row(entry: LogEntry, error: str) -> tuple[Any, ...]:
    """An entry that is not a known event, kept as bytes with why."""
    return (
        entry.partition,
        entry.offset,
        entry.timestamp,
        entry.key,
        entry.value,
        error,
        day(entry.timestamp),
    )
