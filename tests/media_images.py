"""Test images: a JPEG with EXIF orientation and GPS, a PNG, and a decompression bomb's header."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

GPS = {1: "N", 2: (52.0, 31.0, 12.5), 3: "E", 4: (13.0, 24.0, 1.0)}


def jpeg(width: int = 400, height: int = 200, *, gps: bool = True, orientation: int = 6) -> bytes:
    """A JPEG with EXIF orientation (6: shown turned 90° clockwise) and GPS coordinates."""
    im = Image.new("RGB", (width, height), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    if gps:
        exif.get_ifd(0x8825).update(GPS)
    out = io.BytesIO()
    im.save(out, format="JPEG", exif=exif.tobytes(), quality=90)
    return out.getvalue()


def png(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 10)).save(out, format="PNG")
    return out.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (10 gigapixels)."""
    data = bytearray(png(1, 1))
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def has_gps(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as im:
        return bool(im.getexif().get_ifd(0x8825))


def mp4(width: int = 640, height: int = 360, frames: int = 5) -> bytes:
    """A short H.264 MP4 (red frames), made with PyAV's bundled FFmpeg."""
    import av

    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_image(Image.new("RGB", (width, height), (200, 20, 20)))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()
