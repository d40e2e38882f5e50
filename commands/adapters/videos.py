"""A thumbnail from a video's first frame, with PyAV (FFmpeg's libraries, bundled in its wheel).

FFmpeg is C parsing untrusted input, so the decoding runs in a process of its own
(``VideoThumbnails``): a crash there loses that one thumbnail, never the worker. The frame size
is checked against the pixel limit before anything is decoded, and only the first frame is.
"""

from __future__ import annotations

import asyncio
import io
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from commands.adapters.images import THUMBNAIL_QUALITY, ImageRefused

log = logging.getLogger(__name__)


def video_thumbnail(data: bytes, *, longest_side: int, max_pixels: int) -> bytes:
    """A WebP of the video's first frame, longest side at most ``longest_side``, turned as the
    stream's display rotation says."""
    import av  # imported in the decoding process only
    from PIL import Image

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ImageRefused("no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > max_pixels:
                raise ImageRefused(f"{width}x{height} is over the limit of {max_pixels} pixels")
            for frame in container.decode(stream):
                image = frame.to_image()
                rotation = getattr(frame, "rotation", 0) or 0
                break
            else:
                raise ImageRefused("no frame could be decoded")
    except av.FFmpegError as exc:
        raise ImageRefused(f"not a decodable video: {exc}") from exc
    if rotation % 360:
        image = image.rotate(rotation, expand=True)
    image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.convert("RGB").save(out, format="WEBP", quality=THUMBNAIL_QUALITY)
    return out.getvalue()


class VideoThumbnails:
    """``video_thumbnail`` in one spawned worker process, started on first use and started
    again if a video crashed it or took longer than ``timeout_s`` (the process is killed)."""

    def __init__(self, *, longest_side: int, max_pixels: int, timeout_s: float = 30.0) -> None:
        self._longest_side = longest_side
        self._max_pixels = max_pixels
        self._timeout_s = timeout_s
        self._pool: ProcessPoolExecutor | None = None

    async def make(self, data: bytes) -> bytes:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(self._pool, _thumbnail_call, data, self._longest_side, self._max_pixels)
        try:
            return await asyncio.wait_for(call, self._timeout_s)
        except BrokenProcessPool as exc:
            self._pool = None
            raise ImageRefused(f"the decoder process died on this video ({exc})") from exc
        except TimeoutError as exc:
            self._kill()
            raise ImageRefused(f"no frame within {self._timeout_s:.0f} s; decoder process killed") from exc

    def _kill(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # ProcessPoolExecutor has no public way to stop a busy worker before Python 3.14.
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def _thumbnail_call(data: bytes, longest_side: int, max_pixels: int) -> bytes:
    return video_thumbnail(data, longest_side=longest_side, max_pixels=max_pixels)
