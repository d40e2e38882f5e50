"""The media object store built from ``Settings``: one place that turns settings into a client."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from commands.adapters.s3_store import S3ObjectStore
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
