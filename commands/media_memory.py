"""In-memory fakes of the media ports, for unit tests (the real adapters: ``s3_store``,
``redis_media``, ``projections.media``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from commands.media import PendingUpload, stored_row
from events import ChatEvent, MediaDeleted, MediaStored, MessageSent, ThumbnailMade
from projections.views import MediaListing, MediaRow


class MemoryObjectStore:
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.received = 0  # bytes taken from streams, stored or not

    async def put_stream(self, key: str, content_type: str, chunks: AsyncIterator[bytes]) -> int:
        data = bytearray()
        async for chunk in chunks:  # an exception here leaves nothing, like an aborted upload
            self.received += len(chunk)
            data += chunk
        self.objects[key] = (bytes(data), content_type)
        return len(data)

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = (data, content_type)

    async def size(self, key: str) -> int | None:
        return len(self.objects[key][0]) if key in self.objects else None

    async def read(self, key: str, *, limit: int | None = None) -> bytes | None:
        if key not in self.objects:
            return None
        data = self.objects[key][0]
        return data if limit is None else data[:limit]

    async def chunks(self, key: str) -> AsyncIterator[bytes]:
        data = self.objects[key][0]
        for i in range(0, len(data), 1024):
            yield data[i : i + 1024]

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    async def keys(self, prefix: str = "") -> AsyncIterator[tuple[str, int]]:
        for key in list(self.objects):
            if key.startswith(prefix):
                yield key, 0

    async def presign_get(self, key: str, ttl_s: int, *, content_type: str | None = None) -> str:
        return f"memory://{key}?get&ttl={ttl_s}"

    async def presign_put(self, key: str, content_type: str, ttl_s: int, *, size: int | None = None) -> str:
        return f"memory://{key}?put&ttl={ttl_s}&size={size}"


class MemoryMediaIndex:
    def __init__(self) -> None:
        self.rows: dict[str, MediaRow] = {}
        self.access: dict[str, dict[str, int]] = {}

    async def get(self, media_id: str) -> MediaRow | None:
        return self.rows.get(media_id)

    async def conversations_of(self, media_id: str) -> list[str]:
        return sorted(self.access.get(media_id, {}))

    async def grant(self, media_id: str, conversation_id: str, message_id: int) -> None:
        self.access.setdefault(media_id, {})[conversation_id] = message_id

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        for e in events:
            if isinstance(e, MediaStored):
                old = self.rows.get(e.media_id)
                new = stored_row(e)
                if old is not None:  # only the upload's own columns
                    new = MediaRow(**{**old.__dict__, **{k: getattr(new, k) for k in _STORED_COLUMNS}})
                self.rows[e.media_id] = new
            elif isinstance(e, ThumbnailMade) and e.media_id in self.rows:
                row = self.rows[e.media_id]
                self.rows[e.media_id] = MediaRow(
                    **{
                        **row.__dict__,
                        "processed": True,
                        "thumbnail_key": e.thumbnail_key,
                        "shared_key": e.shared_key,
                        "location_removed": e.location_removed,
                    }
                )
            elif isinstance(e, MediaDeleted) and e.media_id in self.rows:
                self.rows[e.media_id] = MediaRow(**{**self.rows[e.media_id].__dict__, "deleted": True})
            elif isinstance(e, MessageSent) and e.media is not None:
                await self.grant(e.media.media_id, e.conversation_id, e.message_id)

    async def all_media(self) -> list[MediaListing]:
        return [
            MediaListing(
                r.media_id,
                r.created_ts,
                r.deleted,
                tuple(k for k in (r.object_key, r.thumbnail_key, r.shared_key) if k),
            )
            for r in self.rows.values()
        ]


_STORED_COLUMNS = (
    "uploader_id",
    "object_key",
    "content_type",
    "size",
    "sha256",
    "width",
    "height",
    "created_ts",
)


class MemoryPendingUploads:
    def __init__(self) -> None:
        self.uploads: dict[str, PendingUpload] = {}

    async def put(self, upload: PendingUpload, ttl_s: int) -> None:
        self.uploads[upload.media_id] = upload

    async def get(self, media_id: str) -> PendingUpload | None:
        return self.uploads.get(media_id)

    async def drop(self, media_id: str) -> None:
        self.uploads.pop(media_id, None)


class MemoryByteQuota:
    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}

    async def used(self, user_id: str) -> int:
        return self.bytes.get(user_id, 0)

    async def charge(self, user_id: str, nbytes: int) -> int:
        self.bytes[user_id] = self.bytes.get(user_id, 0) + nbytes
        return self.bytes[user_id]
