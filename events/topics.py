"""Kafka topic names and key rules, in one place.

The gateway's producer and the Faust worker must put the same bytes in the key, so that one
conversation always lands on one partition: keys are the raw UTF-8 of the id (Faust's "raw"
key serializer), never JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

from events.catalogue import (
    USER_EVENTS,
    ChatEvent,
    DeviceKeysDeleted,
    DeviceKeysPublished,
    DirectOpened,
    EncryptionEnabled,
    GroupEvent,
    MediaDeleted,
    MediaStored,
    MessageSent,
    OneTimeKeyClaimed,
    OneTimeKeysAdded,
    PresenceChanged,
    ReceiptRecorded,
    ThumbnailMade,
)

# Which topic an event goes to, and the field whose value is its key. Every event not listed is
# a conversation's (messages, receipts, membership) and goes to `conversation_events`, keyed by
# `conversation_id`. One lookup by type per append.
_ROUTES: dict[type[Any], tuple[str, str]] = {
    PresenceChanged: ("presence_events", "user_id"),
    MediaStored: ("media_events", "media_id"),
    ThumbnailMade: ("media_events", "media_id"),
    MediaDeleted: ("media_events", "media_id"),
    **{cls: ("user_events", "user_id") for cls in USER_EVENTS},
    DeviceKeysPublished: ("key_events", "user_id"),
    DeviceKeysDeleted: ("key_events", "user_id"),
    OneTimeKeysAdded: ("key_events", "user_id"),
    OneTimeKeyClaimed: ("key_events", "user_id"),
}
_CONVERSATION = ("conversation_events", "conversation_id")


def entity_key(event: ChatEvent) -> str:
    """The id an event is keyed by in its topic (so one entity stays on one partition)."""
    return str(getattr(event, _ROUTES.get(type(event), _CONVERSATION)[1]))


ConversationEvent = MessageSent | ReceiptRecorded | GroupEvent | DirectOpened | EncryptionEnabled


def is_conversation_event(event: ChatEvent) -> TypeGuard[ConversationEvent]:
    """Whether ``event`` belongs to a conversation's log (messages, receipts, membership)."""
    return type(event) not in _ROUTES


@dataclass(frozen=True)
class Topics:
    prefix: str = "tidings."

    @property
    def conversation_events(self) -> str:
        """Messages, membership, metadata and receipts; key ``conversation_id``; never compacted."""
        return f"{self.prefix}conversation-events"

    @property
    def presence_events(self) -> str:
        return f"{self.prefix}presence-events"

    @property
    def media_events(self) -> str:
        """Uploads, thumbnails and deletions of media; key ``media_id``; never compacted."""
        return f"{self.prefix}media-events"

    @property
    def user_events(self) -> str:
        """Each user's own settings (push registrations, mutes); key ``user_id``."""
        return f"{self.prefix}user-events"

    @property
    def key_events(self) -> str:
        """End-to-end encryption's key directory: device keys, one-time keys and their claims;
        key ``user_id``; never compacted."""
        return f"{self.prefix}key-events"

    @property
    def notifications(self) -> str:
        return f"{self.prefix}notifications"

    @property
    def dead_letters(self) -> str:
        """Events an agent could not apply, with the error in the headers."""
        return f"{self.prefix}dead-letters"

    def all(self) -> tuple[str, ...]:
        return (
            self.conversation_events,
            self.presence_events,
            self.notifications,
            self.user_events,
            self.dead_letters,
            self.media_events,
            self.key_events,
        )


def route(topics: Topics, event: ChatEvent) -> tuple[str, str]:
    """The topic ``event`` is appended to and its key."""
    topic, field = _ROUTES.get(type(event), _CONVERSATION)
    return str(getattr(topics, topic)), str(getattr(event, field))


def partition_key(entity_id: str) -> bytes:
    return entity_id.encode()
