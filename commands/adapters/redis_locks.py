"""``Locks`` on Redis: ``SET NX PX`` with a token, released only by its holder.

The lease is short (it protects a read-decide-append of a few milliseconds); a holder that
dies frees the lock when the lease runs out. A ``SET`` retried after a lost reply finds the
holder's own token, and counts as taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.exceptions import RedisError

from commands.adapters.redis_scripts import RELEASE_IF_HELD
from events import keys
from events.errors import Unavailable
from projections.adapters.redis_client import RedisClient


class RedisLocks:
    def __init__(self, redis: RedisClient, *, lease_ms: int = 10_000, wait_s: float = 5.0) -> None:
        self._redis = redis
        self._lease_ms = lease_ms
        self._wait_s = wait_s

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        key = keys.lock(name)
        token = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        delay = 0.002
        try:
            while not await self._take(key, token):
                if loop.time() > deadline:
                    raise Unavailable(f"{name} is busy; try again")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
        except RedisError as exc:
            raise Unavailable("lock service unavailable") from exc
        try:
            yield
        finally:
            # If Redis is gone the lease runs out by itself.
            with contextlib.suppress(RedisError):
                await self._redis.eval(RELEASE_IF_HELD, 1, key, token)

    async def _take(self, key: str, token: str) -> bool:
        """``SET NX`` that also says who holds the key (``GET``, Redis >= 7.0): taken when it
        was free, or when it already holds ``token``. redis-py retries a command whose reply
        was lost (a connection closed under it, a failover); a retried ``SET NX`` that had
        in fact been applied finds this holder's own token, and must not wait out its lease."""
        held_by = await self._redis.set(key, token, nx=True, px=self._lease_ms, get=True)
        return held_by is None or held_by in (token, token.encode())
