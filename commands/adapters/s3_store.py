"""``ObjectStore`` on any S3-compatible store (versitygw locally, S3 or R2 in production), with
aiobotocore. Presigned URLs come from botocore's SigV4 signer; nothing here signs by hand.

A streamed upload goes up as a multipart upload in parts of ``PART_BYTES`` (S3's minimum part
size), so a gateway holds at most one part of any upload in memory; one that fails or is cut
short is aborted, and leaves no object.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from events.errors import Unavailable

log = logging.getLogger(__name__)

PART_BYTES = 5 * 1024 * 1024
READ_BYTES = 1024 * 1024
_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING


class S3ObjectStore:
    def __init__(self, client: Any, bucket: str, *, presigner: Any = None) -> None:
        self._client = client
        # Presigned URLs sign the host: when clients reach the store by another address than
        # the gateway does (containers), they are signed by a client of that address.
        self._presigner = presigner if presigner is not None else client
        self.bucket = bucket

    @classmethod
    async def open(
        cls,
        *,
        endpoint: str,
        region: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        public_endpoint: str | None = None,
    ) -> tuple[S3ObjectStore, contextlib.AsyncExitStack]:
        """A store and the exit stack that closes its client(s)."""
        stack = contextlib.AsyncExitStack()
        config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            # Only the checksums S3 requires: the defaults add CRC trailers that not every
            # S3-compatible store accepts, and the sha256 is checked by us anyway.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=50,
        )
        session = get_session()
        clients = []
        for url in (endpoint, public_endpoint) if public_endpoint else (endpoint,):
            clients.append(
                await stack.enter_async_context(
                    session.create_client(
                        "s3",
                        endpoint_url=url,
                        region_name=region,
                        aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key,
                        config=config,
                    )
                )
            )
        return cls(clients[0], bucket, presigner=clients[-1]), stack

    async def ensure_bucket(self) -> bool:
        """Create the bucket unless it exists; True when this call created it."""
        try:
            await self._client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as exc:
            if not _missing(exc):
                raise Unavailable(f"object store: {exc}") from exc
        except BotoCoreError as exc:
            raise Unavailable(f"object store unreachable: {exc}") from exc
        try:
            await self._client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise Unavailable(f"object store: {exc}") from exc
            return False
        return True

    async def put_stream(self, key: str, content_type: str, chunks: AsyncIterator[bytes]) -> int:
        """Store what ``chunks`` yields under ``key``; return the byte count. An exception from
        ``chunks`` (too large, cut short) aborts the upload and is raised again."""
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        total = 0
        try:
            async for chunk in chunks:
                buffer += chunk
                total += len(chunk)
                while len(buffer) >= PART_BYTES:
                    if upload_id is None:
                        created = await self._client.create_multipart_upload(
                            Bucket=self.bucket, Key=key, ContentType=content_type
                        )
                        upload_id = created["UploadId"]
                    part = bytes(buffer[:PART_BYTES])
                    del buffer[:PART_BYTES]
                    number = len(parts) + 1
                    done = await self._client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part
                    )
                    parts.append({"ETag": done["ETag"], "PartNumber": number})
            if upload_id is None:
                await self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=bytes(buffer), ContentType=content_type
                )
                return total
            if buffer:
                number = len(parts) + 1
                done = await self._client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=bytes(buffer)
                )
                parts.append({"ETag": done["ETag"], "PartNumber": number})
            await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            return total
        except BaseException as exc:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            if isinstance(exc, ClientError | BotoCoreError):
                raise Unavailable(f"object store: {exc}") from exc
            raise

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        try:
            await self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise Unavailable(f"object store: {exc}") from exc

    async def size(self, key: str) -> int | None:
        """The object's size, or None when there is none."""
        try:
            head = await self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise Unavailable(f"object store: {exc}") from exc
        except BotoCoreError as exc:
            raise Unavailable(f"object store: {exc}") from exc
        return int(head["ContentLength"])

    async def read(self, key: str, *, limit: int | None = None) -> bytes | None:
        """The object's bytes (the first ``limit`` of them), or None when there is none."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if limit is not None:
            params["Range"] = f"bytes=0-{max(0, limit - 1)}"
        try:
            got = await self._client.get_object(**params)
            async with got["Body"] as body:
                data: bytes = await body.read()
                return data
        except ClientError as exc:
            if _missing(exc) or exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return None if _missing(exc) else b""
            raise Unavailable(f"object store: {exc}") from exc
        except BotoCoreError as exc:
            raise Unavailable(f"object store: {exc}") from exc

    async def chunks(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes in chunks of up to ``READ_BYTES`` (memory stays flat)."""
        try:
            got = await self._client.get_object(Bucket=self.bucket, Key=key)
            body = got["Body"]
            async with body:
                async for chunk in body.iter_chunks(READ_BYTES):
                    yield chunk
        except (ClientError, BotoCoreError) as exc:
            raise Unavailable(f"object store: {exc}") from exc

    async def delete(self, key: str) -> None:
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if not _missing(exc):
                raise Unavailable(f"object store: {exc}") from exc
        except BotoCoreError as exc:
            raise Unavailable(f"object store: {exc}") from exc

    async def keys(self, prefix: str = "") -> AsyncIterator[tuple[str, int]]:
        """``(key, last modified in ms)`` of every object under ``prefix``."""
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"], int(item["LastModified"].timestamp() * 1000)
        except (ClientError, BotoCoreError) as exc:
            raise Unavailable(f"object store: {exc}") from exc

    async def presign_get(self, key: str, ttl_s: int, *, content_type: str | None = None) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if content_type is not None:
            params["ResponseContentType"] = content_type
        url: str = await self._presigner.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl_s)
        return url

    async def presign_put(self, key: str, content_type: str, ttl_s: int, *, size: int | None = None) -> str:
        """A presigned PUT of ``key``; its ``Content-Type`` (and ``Content-Length``, when
        ``size`` is given) are signed, so the store refuses a PUT with any other."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "ContentType": content_type}
        if size is not None:
            params["ContentLength"] = size
        url: str = await self._presigner.generate_presigned_url("put_object", Params=params, ExpiresIn=ttl_s)
        return url
