"""Image work of the media worker, with Pillow: thumbnails and removing location metadata.

Pure functions over bytes (CPU-bound: the worker runs them in a thread). Every image is checked
against a pixel limit before it is decoded, so a decompression bomb is refused, never expanded.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from commands.media_checks import ImageInfo
from events.errors import Invalid

GPS_IFD = 0x8825
PILLOW_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
THUMBNAIL_QUALITY = 80


class ImageRefused(ValueError):
    """The bytes are not an image Pillow can decode, or have too many pixels."""


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageRefused(f"decompression bomb: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageRefused(f"not a decodable image: {exc}") from exc
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise ImageRefused(f"{width}x{height} is over the limit of {max_pixels} pixels")
    return im


def thumbnail(data: bytes, *, longest_side: int, max_pixels: int) -> bytes:
    """A WebP of the image, its longest side at most ``longest_side``, turned upright as its EXIF
    orientation says (and without any metadata)."""
    with _open(data, max_pixels) as im:
        try:
            # JPEG: decode at a reduced scale straight away (much faster for large photos).
            im.draft("RGB", (longest_side, longest_side))
            upright = ImageOps.exif_transpose(im)
            upright.thumbnail((longest_side, longest_side))
            mode = "RGBA" if upright.mode in ("RGBA", "LA", "P") else "RGB"
            out = io.BytesIO()
            upright.convert(mode).save(out, format="WEBP", quality=THUMBNAIL_QUALITY)
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageRefused(f"cannot decode the image: {exc}") from exc
    return out.getvalue()


def has_location(data: bytes, *, max_pixels: int) -> bool:
    """Whether the image's EXIF carries GPS data."""
    with _open(data, max_pixels) as im:
        return bool(im.getexif().get_ifd(GPS_IFD)) or GPS_IFD in im.getexif()


def without_location(data: bytes, *, max_pixels: int) -> bytes:
    """The image saved again in its own format with the EXIF GPS data removed (JPEG keeps its
    quantisation tables, so the pixels barely change; other EXIF, e.g. orientation, stays)."""
    with _open(data, max_pixels) as im:
        fmt = im.format or "PNG"
        exif = im.getexif()
        exif.pop(GPS_IFD, None)
        out = io.BytesIO()
        try:
            if fmt == "JPEG":
                im.save(out, format="JPEG", exif=exif.tobytes(), quality="keep")
            elif fmt == "WEBP":
                im.save(out, format="WEBP", exif=exif.tobytes(), lossless=True)
            else:
                im.save(out, format=fmt, exif=exif.tobytes())
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageRefused(f"cannot re-encode the image: {exc}") from exc
    return out.getvalue()


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
