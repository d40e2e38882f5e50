"""The checks an upload's bytes pass on their way to the store: type, sha256, size while
streaming, and an image's header against its declared type and the pixel limit."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass

from events.errors import Invalid, TooLarge

# Enough of an image to read its header (a JPEG's EXIF and ICC segments come first, < 64 KiB each).
HEAD_BYTES = 1024 * 1024


def normalize_type(content_type: str | None, allowed: Collection[str]) -> str:
    """The bare media type (no parameters), if allowed; else ``Invalid``."""
    bare = (content_type or "").split(";", 1)[0].strip().lower()
    if not bare:
        raise Invalid("Content-Type is required")
    if bare not in allowed:
        raise Invalid(f"content type {bare!r} is not allowed")
    return bare


def check_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise Invalid("sha256 must be 64 hex digits")
    return value


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int


# What an image's first bytes say it is (``commands.adapters.images.identify_image``): the
# declared type, the bytes' head, the pixel limit; ``Invalid`` when the head disagrees.
IdentifyImage = Callable[[bytes, str, int], ImageInfo]


class Intake:
    """An upload's bytes on their way to the store: counted against the limit and hashed while
    they stream, an image's header checked once enough of it has passed."""

    def __init__(
        self,
        source: AsyncIterator[bytes],
        *,
        limit: int,
        content_type: str,
        max_pixels: int,
        identify: IdentifyImage,
    ) -> None:
        self._source = source
        self._identify = identify
        self._limit = limit
        self._content_type = content_type
        self._max_pixels = max_pixels
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self.size = 0
        self.image: ImageInfo | None = None

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def _checks_image(self) -> bool:
        return self._content_type.startswith("image/") and self.image is None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._source:
            self.size += len(chunk)
            if self.size > self._limit:
                raise TooLarge(f"the upload exceeds {self._limit} bytes")
            self._hash.update(chunk)
            if self._checks_image:
                self._head += chunk
                if len(self._head) >= HEAD_BYTES:
                    self.image = self._identify(bytes(self._head), self._content_type, self._max_pixels)
                    self._head.clear()
            yield chunk
        if self.size == 0:
            raise Invalid("the upload is empty")
        if self._checks_image:
            self.image = self._identify(bytes(self._head), self._content_type, self._max_pixels)
