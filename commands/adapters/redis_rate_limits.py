"""The rate limits' token buckets in Redis, refilled in Redis' clock, so a user gets the same
allowance whichever gateway processes hold their sockets.

When Redis does not answer the limiter lets the request through: everything a limited request
does needs Redis or Kafka anyway, and those report ``unavailable`` themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

from redis.exceptions import RedisError

from commands.rate_limits import Kind, refuse
from events import keys
from projections.adapters.redis_client import RedisClient
from projections.adapters.redis_pipeliner import PipelinedScript, RedisPipeliner

log = logging.getLogger(__name__)

# A token bucket per key, in Redis' clock so every gateway process agrees: ARGV[1] tokens per
# second, ARGV[2] burst. Returns {1, 0} when a token was taken, else {0, ms until one is back}.
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(saved[1])
local at = tonumber(saved[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local taken = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {taken, wait}
"""


class RedisRateLimiter:
    """The checks of concurrent requests share pipelines (``RedisPipeliner``): one script call
    each, but one round trip and one pool checkout for many; a check was the largest part of
    a send's CPU in the gateway when each went alone."""

    def __init__(
        self,
        redis: RedisClient,
        limits: dict[str, tuple[float, int]],
        *,
        pipeliner: RedisPipeliner | None = None,
    ) -> None:
        """``pipeliner``: shared with the process's other pipelined stores (the gateway's
        idempotency store), so the commands of one loop iteration share one round trip."""
        self._limits = limits
        self._script = PipelinedScript(pipeliner or RedisPipeliner(redis), redis, TOKEN_BUCKET)

    async def check(self, kind: Kind, user_id: str) -> None:
        await self.take(kind, user_id)

    def take(self, kind: Kind, user_id: str) -> Coroutine[Any, Any, None]:
        """The script call is queued on the pipeliner now: it goes out in the same pipeline as
        the commands queued before the caller's next ``await`` (a send's claim)."""
        rate, burst = self._limits[kind]
        reply = self._script.queue(keys=[keys.rate_limit(kind, user_id)], args=[rate, burst])
        return self._answer(kind, reply)

    async def _answer(self, kind: Kind, reply: Coroutine[Any, Any, Any]) -> None:
        try:
            taken, wait_ms = await reply
        except RedisError as exc:
            log.debug("rate limiter unavailable (%r); letting %s through", exc, kind)
            return
        if not int(taken):
            raise refuse(kind, float(wait_ms))
