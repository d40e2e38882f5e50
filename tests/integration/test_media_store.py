"""The S3 adapter against the real object store (versitygw, started by the launcher)."""

from __future__ import annotations

import asyncio
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import pytest

from commands.adapters.s3_store import PART_BYTES, S3ObjectStore
from tidings.media_store import open_store
from tidings.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(services: Settings) -> AsyncIterator[S3ObjectStore]:
    opened, stack = await open_store(services)
    async with stack:
        yield opened


def _key() -> str:
    return f"it/{secrets.token_hex(8)}"


async def _chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _http(
    url: str, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None
) -> int:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as err:
        return err.code


async def test_streamed_upload_in_parts_reads_back(store: S3ObjectStore) -> None:
    key = _key()
    data = os.urandom(2 * PART_BYTES + 12345)  # two full parts and a short last one

    assert await store.put_stream(key, "application/octet-stream", _chunks(data)) == len(data)

    assert await store.size(key) == len(data)
    assert b"".join([c async for c in store.chunks(key)]) == data
    assert await store.read(key, limit=100) == data[:100]
    await store.delete(key)
    assert await store.size(key) is None


async def test_a_failed_stream_leaves_no_object(store: S3ObjectStore) -> None:
    key = _key()

    async def cut_short() -> AsyncIterator[bytes]:
        yield os.urandom(PART_BYTES + 1)  # a multipart upload has begun
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.put_stream(key, "image/png", cut_short())

    assert await store.size(key) is None
    uploads = await store._client.list_multipart_uploads(Bucket=store.bucket, Prefix=key)
    assert not uploads.get("Uploads"), "the multipart upload was not aborted"


async def test_the_store_itself_refuses_tampered_and_expired_presigned_urls(store: S3ObjectStore) -> None:
    key = _key()
    await store.put_bytes(key, b"secret bytes", "text/plain")
    good = await store.presign_get(key, 60)
    assert _http(good) == 200

    signature = good.index("X-Amz-Signature=") + len("X-Amz-Signature=")
    flipped = "0" if good[signature] != "0" else "1"
    assert _http(good[:signature] + flipped + good[signature + 1 :]) == 403
    assert _http(good.replace(key, key + "x")) == 403  # another object under the same signature

    short = await store.presign_get(key, 1)
    await asyncio.sleep(2.1)
    assert _http(short) in (400, 403)


async def test_presigned_put_takes_only_the_signed_content_type_and_length(store: S3ObjectStore) -> None:
    key = _key()
    url = await store.presign_put(key, "image/png", 60, size=4)

    assert _http(url, "PUT", b"png?", {"Content-Type": "image/gif"}) == 403
    assert _http(url, "PUT", b"png!!", {"Content-Type": "image/png"}) == 403  # one byte more
    assert _http(url, "PUT", b"png", {"Content-Type": "image/png"}) == 403  # one less
    assert await store.size(key) is None
    assert _http(url, "PUT", b"png!", {"Content-Type": "image/png"}) == 200
    assert await store.read(key) == b"png!"


async def test_keys_lists_what_is_stored(store: S3ObjectStore) -> None:
    key = _key()
    await store.put_bytes(key, b"x", "text/plain")
    listed = {k: ts async for k, ts in store.keys(key)}
    assert set(listed) == {key} and listed[key] > 0


async def test_presigned_urls_are_signed_for_the_public_endpoint(services: Settings) -> None:
    public = f"http://localhost:{services.s3_port}"
    store, stack = await S3ObjectStore.open(
        endpoint=services.s3_endpoint_url,
        region=services.s3_region,
        access_key=services.s3_access_key,
        secret_key=services.s3_secret_key.get_secret_value(),
        bucket=services.s3_bucket,
        public_endpoint=public,
    )
    async with stack:
        key = _key()
        await store.put_bytes(key, b"via the public name", "text/plain")
        url = await store.presign_get(key, 60)
        assert url.startswith(public + "/")
        assert _http(url) == 200
        # Signed for that host only: the same URL by another name is refused by the store.
        assert _http(url.replace("localhost", "127.0.0.1", 1)) == 403
