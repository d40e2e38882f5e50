"""Read models ``media`` and ``media_access``: what each upload is, and who may read it.

Consumes ``MediaStored``, ``ThumbnailMade`` and ``MediaDeleted`` (the media topic) into
``media``, and ``MessageSent`` carrying media (the conversation topic) into ``media_access``: the
conversations a message carrying the media was sent to, whose members may read it. Every write is
an upsert keyed by ids from the event and touches only the columns its event decides, so
redeliveries, the gateway's write-through and a replay from the log all end in the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import singledispatch

from events import ChatEvent, MediaDeleted, MediaStored, MessageSent, ThumbnailMade
from projections.adapters.cql import Cql, distinct_writes
from projections.membership import Statement
from projections.views import MediaListing, MediaRow

NAME = "media"

_STORED = (
    "INSERT INTO {ks}.media (media_id, uploader_id, object_key, content_type, size, sha256, width, height,"
    " created_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_PROCESSED = (
    "UPDATE {ks}.media SET processed = true, thumbnail_key = ?, shared_key = ?, location_removed = ?"
    " WHERE media_id = ?"
)
_DELETED = "UPDATE {ks}.media SET deleted = true WHERE media_id = ?"
_ACCESS = "INSERT INTO {ks}.media_access (media_id, conversation_id, message_id) VALUES (?, ?, ?)"
_SELECT = (
    "SELECT media_id, uploader_id, object_key, content_type, size, sha256, width, height, created_ts,"
    " processed, thumbnail_key, shared_key, location_removed, deleted FROM {ks}.media WHERE media_id = ?"
)
_SELECT_ACCESS = "SELECT conversation_id FROM {ks}.media_access WHERE media_id = ?"
_SELECT_ALL = "SELECT media_id, created_ts, deleted, object_key, thumbnail_key, shared_key FROM {ks}.media"


@singledispatch
def statements(event: ChatEvent) -> list[Statement]:
    return []


@statements.register
def _(event: MediaStored) -> list[Statement]:
    e = event
    values = (e.media_id, e.uploader_id, e.object_key, e.content_type, e.size, e.sha256)
    return [(_STORED, (*values, e.width, e.height, e.ts))]


@statements.register
def _(event: ThumbnailMade) -> list[Statement]:
    return [(_PROCESSED, (event.thumbnail_key, event.shared_key, event.location_removed, event.media_id))]


@statements.register
def _(event: MediaDeleted) -> list[Statement]:
    return [(_DELETED, (event.media_id,))]


@statements.register
def _(event: MessageSent) -> list[Statement]:
    if event.media is None:
        return []
    return [(_ACCESS, (event.media.media_id, event.conversation_id, event.message_id))]


class CassandraMedia:
    """The media read models, their queries, and the stage that applies events to them."""

    name = NAME

    def __init__(self, cql: Cql) -> None:
        self._cql = cql

    def prepare(self) -> None:
        for cql in (_STORED, _PROCESSED, _DELETED, _ACCESS, _SELECT, _SELECT_ACCESS):
            self._cql.prepare(cql)

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        writes = await self.writes(events)
        if writes:
            await self._cql.execute_all(writes)

    async def writes(self, events: Sequence[ChatEvent]) -> list[Statement]:
        """The upserts ``events`` cause, deduplicated (``streams.combined``)."""
        return distinct_writes(events, statements)

    async def get(self, media_id: str) -> MediaRow | None:
        """The row of ``media_id``, deleted ones included (``deleted`` says so)."""
        rows = await self._cql.execute(_SELECT, (media_id,))
        if not rows:
            return None
        r = rows[0]
        return MediaRow(
            media_id=r.media_id,
            uploader_id=r.uploader_id,
            object_key=r.object_key,
            content_type=r.content_type,
            size=r.size,
            sha256=r.sha256,
            width=r.width,
            height=r.height,
            created_ts=r.created_ts,
            processed=bool(r.processed),
            thumbnail_key=r.thumbnail_key,
            shared_key=r.shared_key,
            location_removed=bool(r.location_removed),
            deleted=bool(r.deleted),
        )

    async def grant(self, media_id: str, conversation_id: str, message_id: int) -> None:
        """The access row a ``MessageSent`` carrying the media writes, written through."""
        await self._cql.execute(_ACCESS, (media_id, conversation_id, message_id))

    async def conversations_of(self, media_id: str) -> list[str]:
        """The conversations a message carrying ``media_id`` was sent to."""
        rows = await self._cql.execute(_SELECT_ACCESS, (media_id,))
        return [r.conversation_id for r in rows]

    async def all_media(self) -> list[MediaListing]:
        """Every row, briefly: a full scan, for the orphan job only."""
        rows = await self._cql.execute_paged(_SELECT_ALL)
        return [
            MediaListing(
                r.media_id,
                r.created_ts,
                bool(r.deleted),
                tuple(k for k in (r.object_key, r.thumbnail_key, r.shared_key) if k),
            )
            for r in rows
        ]
