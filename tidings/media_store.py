"""The media object store built from ``Settings``: one place that turns settings into a client."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError

from commands.adapters.s3_store import S3ObjectStore
from events.errors import Unavailable
from tidings.settings import Settings


async def open_store(settings: Settings) -> tuple[S3ObjectStore, contextlib.AsyncExitStack]:
    """The store of ``settings.s3_bucket`` and the exit stack that closes its client."""
    return await S3ObjectStore.open(
        endpoint=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        bucket=settings.s3_bucket,
        public_endpoint=settings.s3_public_endpoint,
    )


async def ensure_bucket(settings: Settings, *, echo: Callable[[str], None] = print) -> None:
    """Create the media bucket unless it exists (part of ``tidings migrate``)."""
    store, stack = await open_store(settings)
    async with stack:
        if await store.ensure_bucket():
            echo(f"s3: created bucket {settings.s3_bucket}")
        await allow_browsers(store)


# Browsers (the web client, served from the gateway's origin) read media from presigned URLs and
# PUT large uploads to them: the store must answer them with CORS headers. Any origin may: a
# presigned URL is its own credential (signed, expiring, for one object and method), and CORS only
# decides whether a page may read an answer it could already get as an <img>.
CORS_RULES = {
    "CORSRules": [
        {
            "AllowedOrigins": ["*"],
            "AllowedMethods": ["GET", "HEAD", "PUT"],
            "AllowedHeaders": ["*"],
            "ExposeHeaders": ["ETag", "Content-Length", "Content-Type"],
            "MaxAgeSeconds": 3600,
        }
    ]
}


async def allow_browsers(store: S3ObjectStore) -> None:
    """Set the bucket's CORS rules (every migrate; the same rules each time)."""
    try:
        await store._client.put_bucket_cors(Bucket=store.bucket, CORSConfiguration=CORS_RULES)
    except (ClientError, BotoCoreError) as exc:
        raise Unavailable(f"object store: setting the bucket's CORS rules failed: {exc}") from exc
