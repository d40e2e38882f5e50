"""Leases a Snowflake worker id in Redis, so every live id-issuing process has its own.

A process holds ``snowflake:worker:<n>`` with a TTL and renews it; a crashed process's id
frees itself when the TTL runs out. A process whose lease lapsed (Redis unreachable for longer
than the TTL) and was taken by another stops issuing ids rather than share one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets

from redis.asyncio import Redis
from redis.exceptions import RedisError

from commands.redis_scripts import RELEASE_IF_HELD, RENEW_IF_HELD
from events import Snowflake, keys
from events.errors import Unavailable
from events.ids import MAX_WORKER

log = logging.getLogger(__name__)


class WorkerIdLease:
    def __init__(self, redis: Redis, worker_id: int, token: str, ttl_s: int) -> None:
        self._redis = redis
        self.worker_id = worker_id
        self._token = token
        self._ttl_s = ttl_s
        self._renewer: asyncio.Task[None] | None = None
        self.held = True

    @classmethod
    async def acquire(cls, redis: Redis, *, ttl_s: int = 60) -> WorkerIdLease:
        token = secrets.token_hex(8)
        start = random.randrange(MAX_WORKER + 1)
        try:
            for i in range(MAX_WORKER + 1):
                worker_id = (start + i) % (MAX_WORKER + 1)
                if await redis.set(keys.snowflake_lease(worker_id), token, nx=True, ex=ttl_s):
                    lease = cls(redis, worker_id, token, ttl_s)
                    lease._renewer = asyncio.create_task(lease._renew_forever())
                    return lease
        except RedisError as exc:
            raise Unavailable("cannot lease a Snowflake worker id") from exc
        raise Unavailable("all Snowflake worker ids are leased")

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            try:
                renewed = await self._redis.eval(
                    RENEW_IF_HELD, 1, keys.snowflake_lease(self.worker_id), self._token, self._ttl_s
                )
            except RedisError as exc:
                log.warning("cannot renew Snowflake worker id %s: %r", self.worker_id, exc)
                continue
            if not renewed:
                # Lost it (expired during an outage): take it back only if still free.
                ok = await self._redis.set(
                    keys.snowflake_lease(self.worker_id), self._token, nx=True, ex=self._ttl_s
                )
                if not ok:
                    self.held = False
                    log.critical("Snowflake worker id %s was taken by another process", self.worker_id)
                    return

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        try:
            await self._redis.eval(
                RELEASE_IF_HELD,
                1,
                keys.snowflake_lease(self.worker_id),
                self._token,
            )
        except RedisError:
            log.warning("could not release Snowflake worker id %s; it expires by itself", self.worker_id)


class LeasedSnowflake:
    """A Snowflake generator that refuses to issue ids once its worker id lease is lost."""

    def __init__(self, lease: WorkerIdLease) -> None:
        self._lease = lease
        self._ids = Snowflake(lease.worker_id)

    def next_id(self) -> int:
        if not self._lease.held:
            raise Unavailable("this process lost its Snowflake worker id; restart it")
        return self._ids.next_id()
