"""Leases a Snowflake worker id in Redis, so every live id-issuing process has its own.

A process holds ``snowflake:worker:<n>`` with a TTL and renews it every third of the TTL; a
crashed process's id frees itself when the TTL runs out. Two processes must never issue ids
with one worker id at the same time, so the holder fences itself:

- **Its own deadline.** A lease is good until ``sent + ttl - margin`` by this process's
  monotonic clock, where ``sent`` is when the last successful renewal (or the acquisition) was
  sent: RedisClient started the key's TTL no earlier than that. Past the deadline no id is issued
  until a renewal succeeds again. A process paused longer than the TTL (SIGSTOP, a VM pause, a
  loop blocked by a long GC) therefore issues nothing when it resumes, even before its renewer
  runs, and by then Redis may have given the id to another process.
- **Lost is final.** A renewal that finds the key gone takes it back only if it is still free;
  if another process holds it, this lease is lost for good and the process must restart.
- **A Redis that may have come back empty.** A Redis without an append-only file, started less
  than a TTL ago, may have forgotten leases that their holders still rely on (within their
  deadline). A lease taken from such a Redis is not used before that TTL has passed since the
  Redis started: by then every earlier holder's deadline has passed, or its renewal found the id
  taken and it stopped. A Redis that persists (``appendonly yes``, as the launcher and
  compose run it) keeps the keys with their expiry across a restart, so no wait.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from commands.adapters.redis_scripts import RELEASE_IF_HELD, RENEW_IF_HELD
from events import Snowflake, keys
from events.errors import Unavailable
from events.ids import MAX_WORKER
from projections.adapters.redis_client import RedisClient

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class WorkerIdLease:
    def __init__(
        self,
        redis: RedisClient,
        worker_id: int,
        token: str,
        ttl_s: float,
        *,
        sent: float,
        usable_from: float = 0.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._redis = redis
        self.worker_id = worker_id
        self._token = token
        self._ttl_s = ttl_s
        self._clock = clock
        # Redis' clock and ours may run at slightly different rates; never trust the last tenth.
        self._margin_s = ttl_s / 10
        self._valid_until = sent + ttl_s - self._margin_s
        self._usable_from = usable_from
        self._renewer: asyncio.Task[None] | None = None
        self.held = True  # False once another process took the id: final

    @classmethod
    async def acquire(
        cls, redis: RedisClient, *, ttl_s: float = 60, clock: Clock = time.monotonic
    ) -> WorkerIdLease:
        """Lease a free worker id (tried from a random one on) and renew it until ``release``.
        Waits before returning if the Redis may have lost its leases (see the module)."""
        token = secrets.token_hex(8)
        start = random.randrange(MAX_WORKER + 1)
        ttl_ms = int(ttl_s * 1000)
        try:
            wait_s = await _empty_redis_wait(redis, ttl_s)
            for i in range(MAX_WORKER + 1):
                worker_id = (start + i) % (MAX_WORKER + 1)
                sent = clock()
                if await redis.set(keys.snowflake_lease(worker_id), token, nx=True, px=ttl_ms):
                    lease = cls(
                        redis, worker_id, token, ttl_s, sent=sent, usable_from=sent + wait_s, clock=clock
                    )
                    lease._renewer = asyncio.create_task(lease._renew_forever())
                    break
            else:
                raise Unavailable("all Snowflake worker ids are leased")
        except RedisError as exc:
            raise Unavailable("cannot lease a Snowflake worker id") from exc
        if wait_s > 0:
            log.warning(
                "Redis started %.0f s ago without an append-only file: it may have forgotten worker-id "
                "leases; Snowflake worker id %s is used in %.0f s",
                ttl_s - wait_s,
                worker_id,
                wait_s,
            )
            await asyncio.sleep(wait_s)
        return lease

    def usable(self) -> bool:
        """Whether ids may be issued with this worker id now."""
        now = self._clock()
        return self.held and self._usable_from <= now < self._valid_until

    async def _renew_forever(self) -> None:
        while self.held:
            await asyncio.sleep(self._ttl_s / 3)
            try:
                await self.renew()
            except RedisError as exc:
                log.warning("cannot renew Snowflake worker id %s: %r", self.worker_id, exc)

    async def renew(self) -> bool:
        """Extend the lease; False (and lost for good) if another process holds the id now."""
        if not self.held:
            return False
        key = keys.snowflake_lease(self.worker_id)
        sent = self._clock()
        renewed = await self._redis.eval(RENEW_IF_HELD, 1, key, self._token, int(self._ttl_s * 1000))
        if not renewed:
            # Gone (expired while this process was paused or cut off, or a Redis that came back
            # empty): take it back only if still free.
            sent = self._clock()
            if not await self._redis.set(key, self._token, nx=True, px=int(self._ttl_s * 1000)):
                self.held = False
                log.critical("Snowflake worker id %s was taken by another process", self.worker_id)
                return False
            log.warning("Snowflake worker id %s had lapsed; taken back", self.worker_id)
        self._valid_until = sent + self._ttl_s - self._margin_s
        return True

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        self.held = False
        try:
            await self._redis.eval(
                RELEASE_IF_HELD,
                1,
                keys.snowflake_lease(self.worker_id),
                self._token,
            )
        except RedisError:
            log.warning("could not release Snowflake worker id %s; it expires by itself", self.worker_id)


async def _empty_redis_wait(redis: RedisClient, ttl_s: float) -> float:
    """How long a lease from this Redis must wait before use: the rest of a TTL since the Redis
    started (plus the second its uptime may be ahead), if it keeps no append-only file (it may
    have restarted empty); else 0."""
    persistence = await redis.info("persistence")
    if int(persistence.get("aof_enabled", 0)) == 1:
        return 0.0
    # Redis counts its uptime in whole seconds of the wall clock (the start and the present
    # time each truncated), so it reads up to a second longer than it has been: started at
    # x.99 s, it says 1 at (x+1).01. One second more keeps the wait at least a TTL since the
    # start, which the fencing needs (a wait one second short let two processes issue ids
    # with one worker id in tests/integration/test_worker_ids.py).
    uptime = float((await redis.info("server")).get("uptime_in_seconds", 0))
    return max(0.0, ttl_s - uptime + 1.0)


class LeasedSnowflake:
    """A Snowflake generator that issues ids only while its worker id lease is good."""

    def __init__(self, lease: WorkerIdLease) -> None:
        self._lease = lease
        self._ids = Snowflake(lease.worker_id)

    def next_id(self) -> int:
        self._check()
        new = self._ids.next_id()
        # Checked again once the id's time is taken: a pause between the first check and that
        # (SIGSTOP, a VM pause, a long GC) would otherwise stamp an id later than the lease's
        # deadline, when another process may already issue ids with this worker id. The id is
        # then dropped (a gap in the sequence, harmless).
        self._check()
        return new

    def _check(self) -> None:
        if not self._lease.usable():
            if not self._lease.held:
                raise Unavailable("this process lost its Snowflake worker id; restart it")
            raise Unavailable("this process's Snowflake worker id lease is not confirmed; retry")
