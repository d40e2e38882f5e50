"""The media worker's stage: thumbnails and location-free copies of stored images (and
thumbnails of videos' first frames), off the request path.

For each ``MediaStored`` image it reads the object, makes a WebP thumbnail (longest side
``longest_side``, EXIF orientation applied), and, when the image's EXIF carries GPS data, a copy
without it for other members to download; then it appends ``ThumbnailMade``. Image work runs in
a thread, under a pixel limit (a decompression bomb gets no thumbnail and cannot crash the
worker). A redelivered event whose media is already processed is skipped. A store that is down
raises ``Unavailable``, which the projector retries; the event is not lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from commands.adapters.images import ImageRefused, has_location, thumbnail, without_location
from commands.adapters.videos import VideoThumbnails
from commands.media import MediaIndex, ObjectStore, new_object_key
from events import ChatEvent, MediaStored, ThumbnailMade

log = logging.getLogger(__name__)

Append = Callable[[ChatEvent], Awaitable[None]]
NAME = "thumbnails"


class Thumbnailer:
    name = NAME

    def __init__(
        self,
        store: Callable[[], Awaitable[ObjectStore]],
        index: MediaIndex,
        append: Append,
        *,
        longest_side: int,
        max_pixels: int,
        max_bytes: int,
        videos: VideoThumbnails | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._index = index
        self._append = append
        self._longest_side = longest_side
        self._max_pixels = max_pixels
        self._max_bytes = max_bytes
        self._videos = videos
        self._clock = clock

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        for event in events:
            if not isinstance(event, MediaStored):
                continue
            if event.content_type.startswith("image/"):
                await self.process(event)
            elif event.content_type.startswith("video/") and self._videos is not None:
                await self.process_video(event, self._videos)

    async def process(self, event: MediaStored) -> ThumbnailMade | None:
        """Make what ``event``'s image needs and append ``ThumbnailMade``; None when skipped."""
        row = await self._index.get(event.media_id)
        if row is not None and (row.processed or row.deleted):
            return None
        store = await self._store()
        data = await store.read(event.object_key, limit=self._max_bytes + 1)
        if data is None:
            log.warning("media %s: object gone before it was processed", event.media_id)
            return None
        thumb: bytes | None = None
        shared: str | None = event.object_key
        removed = False
        if len(data) > self._max_bytes:
            # Too large to decode here: no thumbnail, and shared only if its header has no GPS.
            located = await self._located(data[: 1024 * 1024], event.media_id)
            shared = None if located is not False else event.object_key
        else:
            thumb = await self._thumbnail(data, event.media_id)
            located = await self._located(data, event.media_id)
            if located is None:
                shared = None  # cannot tell, so never shared
            elif located:
                try:
                    clean = await asyncio.to_thread(without_location, data, max_pixels=self._max_pixels)
                except ImageRefused as exc:
                    log.warning("media %s: location not removable (%s); not shared", event.media_id, exc)
                    shared = None
                else:
                    shared, removed = new_object_key("s"), True
                    await store.put_bytes(shared, clean, event.content_type)
        thumb_key = None
        if thumb is not None:
            thumb_key = new_object_key("t")
            await store.put_bytes(thumb_key, thumb, "image/webp")
        made = ThumbnailMade(
            media_id=event.media_id,
            thumbnail_key=thumb_key,
            shared_key=shared,
            location_removed=removed,
            ts=int(self._clock() * 1000),
        )
        await self._append(made)
        return made

    async def process_video(self, event: MediaStored, videos: VideoThumbnails) -> ThumbnailMade | None:
        """A thumbnail of the video's first frame, when one can be read; the video itself is
        shared as uploaded."""
        row = await self._index.get(event.media_id)
        if row is not None and (row.processed or row.deleted):
            return None
        store = await self._store()
        thumb_key = None
        if event.size <= self._max_bytes:
            data = await store.read(event.object_key)
            if data is None:
                log.warning("media %s: object gone before it was processed", event.media_id)
                return None
            try:
                thumb = await videos.make(data)
            except ImageRefused as exc:
                log.warning("media %s: no video thumbnail (%s)", event.media_id, exc)
            else:
                thumb_key = new_object_key("t")
                await store.put_bytes(thumb_key, thumb, "image/webp")
        made = ThumbnailMade(
            media_id=event.media_id,
            thumbnail_key=thumb_key,
            shared_key=event.object_key,
            location_removed=False,
            ts=int(self._clock() * 1000),
        )
        await self._append(made)
        return made

    async def _thumbnail(self, data: bytes, media_id: str) -> bytes | None:
        try:
            return await asyncio.to_thread(
                thumbnail, data, longest_side=self._longest_side, max_pixels=self._max_pixels
            )
        except ImageRefused as exc:
            log.warning("media %s: no thumbnail (%s)", media_id, exc)
            return None

    async def _located(self, data: bytes, media_id: str) -> bool | None:
        try:
            return await asyncio.to_thread(has_location, data, max_pixels=self._max_pixels)
        except ImageRefused as exc:
            log.warning("media %s: EXIF not readable (%s)", media_id, exc)
            return None
