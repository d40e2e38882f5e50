"""Media uploads and reads: the pure checks and the thin handlers over the ports.

An upload is a fact (``MediaStored``) only once its bytes are in the object store under a random
key, its size is within the limit (counted while streaming, never after buffering the body) and
its sha256 is known; until then nothing refers to the object, so a refused or cut-short upload
leaves nothing visible. Who may read: the uploader, and members of a conversation a message
carrying the media was sent to (``media_access``). Other members of a conversation never get an
image's original bytes: they get the copy the media worker made without location metadata.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from commands.media_checks import IdentifyImage, ImageInfo, Intake, check_sha256, normalize_type
from commands.membership import member_role
from commands.ports import Directory, EventLog
from events import ChatEvent, MediaRef, MediaStored, MessageKind
from events.errors import Conflict, Forbidden, Invalid, NotFound, RateLimited, TooLarge
from projections.views import MediaRow


class ObjectStore(Protocol):
    async def put_stream(self, key: str, content_type: str, chunks: AsyncIterator[bytes]) -> int: ...
    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...
    async def size(self, key: str) -> int | None: ...
    async def read(self, key: str, *, limit: int | None = None) -> bytes | None: ...
    def chunks(self, key: str) -> AsyncIterator[bytes]: ...
    async def delete(self, key: str) -> None: ...
    async def presign_get(self, key: str, ttl_s: int, *, content_type: str | None = None) -> str: ...
    async def presign_put(
        self, key: str, content_type: str, ttl_s: int, *, size: int | None = None
    ) -> str: ...


class MediaIndex(Protocol):
    """The media read models, as the write side needs them."""

    async def get(self, media_id: str) -> MediaRow | None: ...
    async def conversations_of(self, media_id: str) -> list[str]: ...
    async def grant(self, media_id: str, conversation_id: str, message_id: int) -> None: ...
    async def apply(self, events: Sequence[ChatEvent]) -> None:
        """Write events through right after they are in the log (the worker applies them again)."""


def stored_row(event: MediaStored) -> MediaRow:
    return MediaRow(
        media_id=event.media_id,
        uploader_id=event.uploader_id,
        object_key=event.object_key,
        content_type=event.content_type,
        size=event.size,
        sha256=event.sha256,
        width=event.width,
        height=event.height,
        created_ts=event.ts,
    )


@dataclass(frozen=True)
class PendingUpload:
    """A presigned upload that was handed out and not completed yet."""

    media_id: str
    uploader_id: str
    object_key: str
    content_type: str
    size: int
    sha256: str
    expires_ts: int


class PendingUploads(Protocol):
    async def put(self, upload: PendingUpload, ttl_s: int) -> None: ...
    async def get(self, media_id: str) -> PendingUpload | None: ...
    async def drop(self, media_id: str) -> None: ...


class ByteQuota(Protocol):
    async def used(self, user_id: str) -> int:
        """Bytes the user uploaded today (UTC)."""

    async def charge(self, user_id: str, nbytes: int) -> int:
        """Add ``nbytes`` to today's count; return the new count."""


@dataclass(frozen=True)
class MediaPolicy:
    allowed_types: frozenset[str]
    max_direct_bytes: int
    max_upload_bytes: int
    max_pixels: int
    url_ttl_s: int
    daily_bytes: int


def new_media_id() -> str:
    return uuid.uuid4().hex


def new_object_key(kind: str = "o") -> str:
    """A random key, unrelated to the media id: knowing one never gives the other."""
    return f"{kind}/{secrets.token_hex(16)}"


@dataclass
class MediaService:
    """The media commands and queries, over the ports; built by the gateway's composition root."""

    store: ObjectStore
    index: MediaIndex
    log: EventLog
    directory: Directory
    pending: PendingUploads
    quota: ByteQuota
    policy: MediaPolicy
    identify_image: IdentifyImage
    clock: Callable[[], float] = time.time

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def _check_quota(self, user_id: str, adding: int) -> None:
        used = await self.quota.used(user_id)
        if used + adding > self.policy.daily_bytes:
            raise RateLimited(
                "daily upload quota used up", retry_after=_seconds_to_utc_midnight(self.clock())
            )

    async def upload(
        self,
        user_id: str,
        content_type: str | None,
        body: AsyncIterator[bytes],
        *,
        declared_size: int | None = None,
        declared_sha256: str | None = None,
    ) -> dict[str, object]:
        """A direct upload: stream ``body`` to the store and record it (``POST /v1/media``)."""
        ctype = normalize_type(content_type, self.policy.allowed_types)
        expected_sha = check_sha256(declared_sha256)
        if declared_size is not None and declared_size > self.policy.max_direct_bytes:
            raise TooLarge(f"the upload exceeds {self.policy.max_direct_bytes} bytes")
        await self._check_quota(user_id, declared_size or 0)
        key = new_object_key()
        intake = Intake(
            body,
            limit=self.policy.max_direct_bytes,
            content_type=ctype,
            max_pixels=self.policy.max_pixels,
            identify=self.identify_image,
        )
        await self.store.put_stream(key, ctype, aiter(intake))
        if expected_sha is not None and expected_sha != intake.sha256:
            await self.store.delete(key)
            raise Invalid("the bytes do not match the declared sha256")
        if declared_size is not None and declared_size != intake.size:
            await self.store.delete(key)
            raise Invalid("the bytes do not match the declared size")
        return await self._record(user_id, key, ctype, intake.size, intake.sha256, intake.image)

    async def _record(
        self, user_id: str, key: str, ctype: str, size: int, sha256: str, image: ImageInfo | None
    ) -> dict[str, object]:
        event = MediaStored(
            media_id=new_media_id(),
            uploader_id=user_id,
            object_key=key,
            content_type=ctype,
            size=size,
            sha256=sha256,
            width=image.width if image else None,
            height=image.height if image else None,
            ts=self._now_ms(),
        )
        await self.quota.charge(user_id, size)
        await self.log.append(event)
        await self.index.apply([event])
        return stored_row(event).public()

    async def begin_upload(
        self, user_id: str, content_type: str, size: int, sha256: str
    ) -> dict[str, object]:
        """A presigned upload: the URL the client PUTs the bytes to (``POST /v1/media/uploads``)."""
        ctype = normalize_type(content_type, self.policy.allowed_types)
        digest = check_sha256(sha256)
        assert digest is not None
        if size <= 0:
            raise Invalid("size must be positive")
        if size > self.policy.max_upload_bytes:
            raise TooLarge(f"the upload exceeds {self.policy.max_upload_bytes} bytes")
        await self._check_quota(user_id, size)
        ttl = self.policy.url_ttl_s
        upload = PendingUpload(
            media_id=new_media_id(),
            uploader_id=user_id,
            object_key=new_object_key(),
            content_type=ctype,
            size=size,
            sha256=digest,
            expires_ts=self._now_ms() + ttl * 1000,
        )
        url = await self.store.presign_put(upload.object_key, ctype, ttl, size=size)
        # Kept past the URL's life, so that a PUT begun just before expiry can still complete.
        await self.pending.put(upload, ttl * 2)
        return {"media_id": upload.media_id, "upload_url": url, "expires_ts": upload.expires_ts}

    async def complete_upload(self, user_id: str, media_id: str) -> dict[str, object]:
        """Check the PUT bytes against the declared size and sha256 and record them; a mismatch
        is 409 and the object is discarded."""
        upload = await self.pending.get(media_id)
        if upload is None or upload.uploader_id != user_id:
            done = await self.index.get(media_id)
            if done is not None and done.uploader_id == user_id and not done.deleted:
                return done.public()  # completed before: the same answer again
            raise NotFound(f"no upload {media_id!r} to complete")
        size = await self.store.size(upload.object_key)
        if size is None:
            raise Conflict("nothing was uploaded to the upload URL yet")
        if size != upload.size:
            await self._discard(upload)
            raise Conflict(f"{size} bytes were uploaded, {upload.size} were declared; discarded")
        intake = Intake(
            self.store.chunks(upload.object_key),
            limit=upload.size,
            content_type=upload.content_type,
            max_pixels=self.policy.max_pixels,
            identify=self.identify_image,
        )
        try:
            async for _ in intake:
                pass
        except Invalid:
            await self._discard(upload)
            raise
        if intake.sha256 != upload.sha256:
            await self._discard(upload)
            raise Conflict("the uploaded bytes do not match the declared sha256; discarded")
        event = MediaStored(
            media_id=upload.media_id,
            uploader_id=user_id,
            object_key=upload.object_key,
            content_type=upload.content_type,
            size=size,
            sha256=intake.sha256,
            width=intake.image.width if intake.image else None,
            height=intake.image.height if intake.image else None,
            ts=self._now_ms(),
        )
        await self.log.append(event)
        await self.index.apply([event])
        await self.pending.drop(media_id)
        return stored_row(event).public()

    async def _discard(self, upload: PendingUpload) -> None:
        await self.store.delete(upload.object_key)
        await self.pending.drop(upload.media_id)

    async def readable(self, user_id: str, media_id: str) -> MediaRow:
        """The row, if ``user_id`` may read it: ``NotFound`` or ``Forbidden`` otherwise."""
        row = await self.index.get(media_id)
        if row is None or row.deleted:
            raise NotFound(f"no media {media_id!r}")
        if row.uploader_id == user_id:
            return row
        for cid in await self.index.conversations_of(media_id):
            try:
                await member_role(self.directory, cid, user_id)
            except (Forbidden, NotFound, Invalid):
                continue
            return row
        raise Forbidden("not shared with you")

    async def download_url(self, user_id: str, media_id: str) -> str:
        """A presigned URL of the bytes ``user_id`` may read (an image without its location for
        anyone but the uploader)."""
        row = await self.readable(user_id, media_id)
        key = row.object_key
        if row.uploader_id != user_id and row.is_image:
            if not row.processed:
                raise NotFound("the image is still being processed; try again shortly")
            if row.shared_key is None:
                raise NotFound("the image cannot be shared without its location metadata")
            key = row.shared_key
        return await self.store.presign_get(key, self.policy.url_ttl_s, content_type=row.content_type)

    async def thumbnail_url(self, user_id: str, media_id: str) -> str:
        row = await self.readable(user_id, media_id)
        if row.thumbnail_key is None:
            raise NotFound("no thumbnail")
        return await self.store.presign_get(
            row.thumbnail_key, self.policy.url_ttl_s, content_type="image/webp"
        )

    async def for_send(self, user_id: str, media_id: str | None, kind: MessageKind) -> MediaRef | None:
        """The media a send of ``kind`` carries: only the uploader may send it, and an image or
        video message needs media of that type."""
        if kind == "text" or media_id is None:
            return None
        row = await self.index.get(media_id)
        if row is None or row.deleted:
            raise NotFound(f"no media {media_id!r}")
        if row.uploader_id != user_id:
            raise Forbidden("only the uploader may send this media")
        if kind in ("image", "video") and not row.content_type.startswith(f"{kind}/"):
            raise Invalid(f"a {kind} message needs {kind} media, not {row.content_type}")
        return MediaRef(
            media_id=row.media_id,
            content_type=row.content_type,
            size=row.size,
            sha256=row.sha256,
            width=row.width,
            height=row.height,
        )

    async def sent(self, media: MediaRef, conversation_id: str, message_id: int) -> None:
        """Members of ``conversation_id`` may read ``media`` from now on (write-through of the
        access row the worker derives from the ``MessageSent``)."""
        await self.index.grant(media.media_id, conversation_id, message_id)


def _seconds_to_utc_midnight(now: float) -> int:
    return max(1, 86400 - int(now) % 86400)
