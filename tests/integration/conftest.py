"""Fixtures shared by the integration tier."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from projections.adapters.redis_client import make_redis
from tidings.settings import Settings


@pytest.fixture
async def redis(services: Settings) -> AsyncIterator[Redis]:
    """A client of the tests' Redis database, as the processes open it (``make_redis``)."""
    client = make_redis(services.redis_host, services.redis_port, services.redis_db)
    yield client
    await client.aclose()
