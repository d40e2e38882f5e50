"""The orphan job: media uploaded and never sent, and objects nothing refers to, once they are
older than the orphan age (a day by default), are deleted (``tidings media gc-orphans``).

A media row that no message carries is first marked deleted in the log (``MediaDeleted``,
written through), so no send can pick it up any more, and only then are its objects deleted.
Objects of the bucket that no live media row names (a presigned upload never completed, a
thumbnail of deleted media, leftovers of a crash) are deleted once they are that old too.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from commands.ports import EventLog
from events import ChatEvent, MediaDeleted
from projections.views import MediaListing

log = logging.getLogger(__name__)


class MediaCatalogue(Protocol):
    async def all_media(self) -> list[MediaListing]: ...
    async def conversations_of(self, media_id: str) -> list[str]: ...
    async def apply(self, events: Sequence[ChatEvent]) -> None: ...


class Bucket(Protocol):
    def keys(self, prefix: str = "") -> AsyncIterator[tuple[str, int]]: ...
    async def delete(self, key: str) -> None: ...


@dataclass
class Collected:
    media: list[str] = field(default_factory=list)  # media ids marked deleted
    objects: list[str] = field(default_factory=list)  # object keys deleted


async def collect_orphans(
    catalogue: MediaCatalogue, bucket: Bucket, events: EventLog, *, now_ms: int, older_than_ms: int
) -> Collected:
    """Delete media never sent and unreferenced objects older than ``older_than_ms``."""
    cutoff = now_ms - older_than_ms
    done = Collected()
    live_keys: set[str] = set()
    for item in await catalogue.all_media():
        if item.deleted:
            continue
        if item.created_ts > cutoff or await catalogue.conversations_of(item.media_id):
            live_keys.update(item.keys)
            continue
        event = MediaDeleted(media_id=item.media_id, reason="orphan: never sent", ts=now_ms)
        await events.append(event)
        await catalogue.apply([event])
        done.media.append(item.media_id)
    async for key, modified_ms in bucket.keys():
        if key in live_keys or modified_ms > cutoff:
            continue
        await bucket.delete(key)
        done.objects.append(key)
    log.info("orphan job: %d media deleted, %d objects deleted", len(done.media), len(done.objects))
    return done
