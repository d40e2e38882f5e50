"""Kafka topic names and key rules, in one place.

The gateway's producer and the Faust worker must put the same bytes in the key, so that one
conversation always lands on one partition: keys are the raw UTF-8 of the id (Faust's "raw"
key serializer), never JSON.
"""

from __future__ import annotations

from dataclasses import dataclass


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


def partition_key(entity_id: str) -> bytes:
    return entity_id.encode()
