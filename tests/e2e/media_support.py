"""Helpers of the media tests: test images, raw HTTP (no redirects followed, bodies sent the way
a test needs, chunked or cut short), and the real object store's contents."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

from tests.e2e.conftest import System
from tests.media_images import GPS, has_gps, jpeg, mp4, png, png_bomb
from tidings.media_store import open_store
from tidings.settings import Settings


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def call(
    system: System,
    method: str,
    path: str,
    *,
    user: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request, redirects not followed: (status, headers, JSON body or raw bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=60)
    try:
        conn.request(
            method,
            path,
            body=body,
            headers={"Authorization": f"Bearer {system.token(user)}", **(headers or {})},
        )
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    got = {k.lower(): v for k, v in response.getheaders()}
    parsed: Any = payload
    if got.get("content-type", "").startswith("application/json") and payload:
        parsed = orjson.loads(payload)
    return response.status, got, parsed


def upload(system: System, user: str, data: bytes, content_type: str, **headers: str) -> tuple[int, Any]:
    status, _, body = call(
        system, "POST", "/v1/media", user=user, body=data, headers={"Content-Type": content_type, **headers}
    )
    return status, body


def fetch(
    url: str, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def download(system: System, user: str, path: str, timeout_s: float = 20) -> tuple[int, str | None, bytes]:
    """GET a media path; 404 (still being processed) is asked again until ``timeout_s``. Returns
    (status, the presigned URL or None, the bytes behind it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, headers, body = call(system, "GET", path, user=user)
        if status == 302:
            url = headers["location"]
            got, data = fetch(url)
            assert got == 200, (got, data[:300])
            return status, url, data
        if status != 404 or time.monotonic() > deadline:
            return status, None, body if isinstance(body, bytes) else orjson.dumps(body)
        time.sleep(0.2)


def url_ttl_s(url: str) -> int:
    query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
    return int(query["X-Amz-Expires"][0])


def raw_request(port: int, head: str, parts: list[bytes], *, read: bool = True) -> bytes:
    """Send ``head`` and ``parts`` on a raw socket (the test decides framing and when to stop),
    then read one HTTP answer (status line, headers and body) unless told not to."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head.encode())
        for part in parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        if not read:
            return b""
        response = http.client.HTTPResponse(sock)
        response.begin()  # skips a "100 Continue"
        body = response.read()
        return f"HTTP/1.1 {response.status}\r\n".encode() + body


def stored_keys(settings: Settings) -> set[str]:
    """Every object key in the test bucket, and every multipart upload still open."""

    async def listing() -> set[str]:
        store, stack = await open_store(settings)
        async with stack:
            found = {key async for key, _ in store.keys()}  # noqa: SIM118 - not a dict
            uploads = await store._client.list_multipart_uploads(Bucket=store.bucket)
            return found | {f"multipart:{u['Key']}" for u in uploads.get("Uploads", [])}

    return asyncio.run(listing())


__all__ = ["GPS", "has_gps", "jpeg", "mp4", "png", "png_bomb"]
