"""The checks an upload's bytes pass on their way to the store: type, sha256, size while
streaming, and an image's header against its declared type and the pixel limit."""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from events.errors import Invalid, TooLarge

# Enough of an image to read its header (a JPEG's EXIF and ICC segments come first, < 64 KiB each).
HEAD_BYTES = 1024 * 1024
PILLOW_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


@dataclass(frozen=True)
class MediaPolicy:
    """What an upload may be: its types, sizes, pixels, URL lifetime and a user's daily bytes."""

    allowed_types: frozenset[str]
    max_direct_bytes: int
    max_upload_bytes: int
    max_pixels: int
    url_ttl_s: int
    daily_bytes: int


def normalize_type(content_type: str | None, policy: MediaPolicy) -> str:
    """The bare media type (no parameters), if allowed; else ``Invalid``."""
    bare = (content_type or "").split(";", 1)[0].strip().lower()
    if not bare:
        raise Invalid("Content-Type is required")
    if bare not in policy.allowed_types:
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


def identify_image(head: bytes, declared: str, max_pixels: int) -> ImageInfo:
    """What the bytes' header says the image is: ``Invalid`` when they are not an image of the
    declared type, or have more pixels than ``max_pixels`` (a decompression bomb)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(head)) as im:
                fmt, (width, height) = im.format, im.size
    except Image.DecompressionBombError as exc:
        raise Invalid("the image has too many pixels") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise Invalid(f"the bytes are not a {declared} image") from exc
    if PILLOW_FORMATS.get(fmt or "") != declared:
        raise Invalid(f"the bytes are {fmt or 'unknown'}, not {declared}")
    if width * height > max_pixels:
        raise Invalid(f"the image has {width * height} pixels, over the limit of {max_pixels}")
    return ImageInfo(width, height)


class Intake:
    """An upload's bytes on their way to the store: counted against the limit and hashed while
    they stream, an image's header checked once enough of it has passed."""

    def __init__(
        self, source: AsyncIterator[bytes], *, limit: int, content_type: str, max_pixels: int
    ) -> None:
        self._source = source
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
                    self.image = identify_image(bytes(self._head), self._content_type, self._max_pixels)
                    self._head.clear()
            yield chunk
        if self.size == 0:
            raise Invalid("the upload is empty")
        if self._checks_image:
            self.image = identify_image(bytes(self._head), self._content_type, self._max_pixels)
