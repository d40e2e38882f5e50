"""Media: upload (direct, or presigned for large files), download and thumbnails, over the
protocol's ``/v1/media`` routes (``client.media``). Sending a media message is
``TidingsClient.send_media``."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from tidings_client.errors import NotFound, ObjectStoreError, TooLarge, Unavailable
from tidings_client.models import Media

if TYPE_CHECKING:
    from tidings_client.client import TidingsClient

DIRECT_MAX_BYTES = 25 * 1024 * 1024
"""The protocol's limit of a direct upload (``POST /v1/media``); larger files go presigned."""
CHUNK = 1024 * 1024


class MediaApi:
    """Media of one client: ``client.media``. Uploads return the typed ``Media`` object; refusals
    raise the typed errors (``InvalidRequest`` for a type or content the server refuses,
    ``TooLarge``, ``RateLimited``, ``Conflict`` when stored bytes do not match, ``Forbidden`` /
    ``NotFound`` for media you may not read); a failed transfer to or from the object store
    raises ``ObjectStoreError``.

    Files up to ``direct_max_bytes`` go in one ``POST /v1/media`` (with ``X-Content-SHA256``, so
    the server checks the bytes); larger ones (or ``presigned=True``) take the presigned flow:
    ``POST /v1/media/uploads``, a ``PUT`` of the bytes to the object store, then ``complete``.
    Downloads follow the gateway's redirect to the presigned URL without sending the token there."""

    def __init__(self, client: TidingsClient, direct_max_bytes: int = DIRECT_MAX_BYTES) -> None:
        self._client = client
        self.direct_max_bytes = direct_max_bytes

    # ---- upload ---------------------------------------------------------------------------

    async def upload(self, data: bytes, content_type: str, *, presigned: bool | None = None) -> Media:
        """Upload ``data`` as ``content_type``; the stored media object (sha256 checked)."""
        digest = hashlib.sha256(data).hexdigest()
        if presigned is None:
            presigned = len(data) > self.direct_max_bytes
        if presigned:
            return await self._presigned(len(data), digest, content_type, data)
        self._check_direct(len(data))
        return await self._direct(data, content_type, digest)

    async def upload_file(
        self, path: str | os.PathLike[str], content_type: str, *, presigned: bool | None = None
    ) -> Media:
        """Upload a file, streamed from disk (read twice: once for its sha256, once to send)."""
        file = Path(path)
        size = (await asyncio.to_thread(file.stat)).st_size
        digest = await asyncio.to_thread(_file_sha256, file)
        if presigned is None:
            presigned = size > self.direct_max_bytes
        if presigned:
            return await self._presigned(size, digest, content_type, file)
        self._check_direct(size)
        return await self._direct(_file_chunks(file), content_type, digest, size=size)

    def _check_direct(self, size: int) -> None:
        # A gateway answers 413 as soon as it reads the Content-Length and closes the connection
        # while the body is still going out, so the client would see a reset, not the answer.
        if size > self.direct_max_bytes:
            raise TooLarge(
                f"{size} bytes is over the direct upload limit ({self.direct_max_bytes}): upload presigned"
            )

    async def _direct(
        self, content: bytes | AsyncIterator[bytes], content_type: str, digest: str, size: int | None = None
    ) -> Media:
        client = self._client
        headers = {
            "Authorization": f"Bearer {client.token}",
            "Content-Type": content_type,
            "X-Content-SHA256": digest,
        }
        if size is not None:
            headers["Content-Length"] = str(size)
        # Bytes can be sent again to the next gateway; a stream from a file cannot.
        tries = len(client.urls) if isinstance(content, bytes) else 1
        last: Exception | None = None
        for _ in range(tries):
            try:
                response = await client._http.post(client.url + "/v1/media", content=content, headers=headers)
            except httpx.TransportError as exc:
                last = exc
                client._next_url()
                continue
            return Media.from_json(_answer(response))
        raise Unavailable(f"no gateway answered: {last}") from last

    async def _presigned(self, size: int, digest: str, content_type: str, source: bytes | Path) -> Media:
        client = self._client
        started = await client._request(
            "POST",
            "/v1/media/uploads",
            json_body={"content_type": content_type, "size": size, "sha256": digest},
        )
        media_id, url = str(started["media_id"]), str(started["upload_url"])
        # Type and length are part of the signature: the store refuses anything else.
        content = source if isinstance(source, bytes) else _file_chunks(source)
        try:
            response = await client._http.put(
                url, content=content, headers={"Content-Type": content_type, "Content-Length": str(size)}
            )
        except httpx.TransportError as exc:
            raise ObjectStoreError(f"the object store could not be reached: {exc}") from exc
        if response.status_code >= 300:
            raise ObjectStoreError(
                response.content[:300].decode("utf-8", errors="replace"), status=response.status_code
            )
        data = await client._request("POST", f"/v1/media/{media_id}/complete")
        return Media.from_json(data)

    # ---- download -------------------------------------------------------------------------

    async def url(self, media_id: str, *, thumbnail: bool = False) -> str:
        """A presigned URL of the bytes (valid ≤ 15 min: hand it to something that cannot send
        the token, e.g. an ``<img>``). ``NotFound`` for a thumbnail not made (yet)."""
        client = self._client
        path = f"/v1/media/{media_id}" + ("/thumbnail" if thumbnail else "")
        response = await client._http.get(
            client.url + path, headers={"Authorization": f"Bearer {client.token}"}
        )
        if response.status_code in (301, 302, 303, 307, 308):
            return str(response.headers["location"])
        if response.status_code == 200:
            # The server answered with the bytes themselves: the route is the URL.
            return client.url + path
        _answer(response)  # raises the typed error
        raise ObjectStoreError(f"unexpected answer {response.status_code}", status=response.status_code)

    async def stream(self, media_id: str, *, thumbnail: bool = False) -> AsyncIterator[bytes]:
        """The bytes of the media (or of its WebP thumbnail), chunk by chunk."""
        client = self._client
        path = f"/v1/media/{media_id}" + ("/thumbnail" if thumbnail else "")
        auth = {"Authorization": f"Bearer {client.token}"}
        async with client._http.stream("GET", client.url + path, headers=auth) as response:
            if response.status_code == 200:
                async for chunk in response.aiter_bytes(CHUNK):
                    yield chunk
                return
            if response.status_code not in (301, 302, 303, 307, 308):
                await response.aread()
                _answer(response)
            location = str(response.headers["location"])
        # The presigned URL is its own credential: the token never goes to the object store.
        async with client._http.stream("GET", location) as stored:
            if stored.status_code != 200:
                await stored.aread()
                raise ObjectStoreError(
                    stored.content[:300].decode("utf-8", errors="replace"), status=stored.status_code
                )
            async for chunk in stored.aiter_bytes(CHUNK):
                yield chunk

    async def download(self, media_id: str, *, wait_s: float = 0.0, poll_s: float = 0.3) -> bytes:
        """The media's bytes (members other than the uploader get images without location data).
        Such a copy is made after the upload: until it exists the answer is ``NotFound``, and
        with ``wait_s`` the call asks again (every ``poll_s``) meanwhile."""
        return await self._fetch(media_id, False, wait_s, poll_s)

    async def download_to(
        self, media_id: str, path: str | os.PathLike[str], *, wait_s: float = 0.0, poll_s: float = 0.3
    ) -> int:
        """Write the media's bytes to ``path`` (streamed, never whole in memory); how many.
        ``wait_s`` as for ``download``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            written = 0
            try:
                with open(path, "wb") as out:  # noqa: ASYNC230 - chunked writes of a download
                    async for chunk in self.stream(media_id):
                        out.write(chunk)
                        written += len(chunk)
                return written
            except NotFound:
                if loop.time() >= deadline:
                    raise
            await asyncio.sleep(poll_s)

    async def thumbnail(self, media_id: str, *, wait_s: float = 0.0, poll_s: float = 0.3) -> bytes:
        """The thumbnail (WebP, longest side ≤ 320 px) of an image or video. It is made after the
        upload: with ``wait_s`` the call asks again (every ``poll_s``) while it is ``NotFound``."""
        return await self._fetch(media_id, True, wait_s, poll_s)

    async def _fetch(self, media_id: str, thumbnail: bool, wait_s: float, poll_s: float) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            try:
                return b"".join([chunk async for chunk in self.stream(media_id, thumbnail=thumbnail)])
            except NotFound:
                if loop.time() >= deadline:
                    raise
            await asyncio.sleep(poll_s)


def _answer(response: httpx.Response) -> Any:
    from tidings_client.client import _http_error  # the client module imports this one

    if response.status_code >= 400:
        raise _http_error(response.status_code, response.headers, response.content)
    return response.json()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk
