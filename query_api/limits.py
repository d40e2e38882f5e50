"""Per-user rate limits shared by every gateway process, and the WebSocket upgrade's guards.

Each kind of request (``send``, ``typing``, ``presence``, ``connect``) has a token bucket per
user in Redis, refilled in Redis' clock, so a user gets the same allowance whichever gateway
processes hold their sockets. Refusals are ``RateLimited`` with ``retry_after`` in seconds:
429 with ``Retry-After`` over HTTP, an ``error`` frame ``rate_limited`` with ``retry_after``
over WebSocket (both rendered in ``query_api.errors``).

When Redis does not answer the limiter lets the request through: everything a limited request
does needs Redis or Kafka anyway, and those report ``unavailable`` themselves.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from commands.redis_pipeliner import PipelinedScript, RedisPipeliner
from commands.redis_scripts import TOKEN_BUCKET
from events import keys
from events.errors import Forbidden, RateLimited
from tidings.settings import Settings

log = logging.getLogger(__name__)

Kind = Literal["send", "typing", "presence", "connect", "media", "search"]


def limits_from(settings: Settings) -> dict[str, tuple[float, int]]:
    """kind -> (tokens per second, burst)."""
    return {
        "send": (settings.rate_send_per_s, settings.rate_send_burst),
        "typing": (settings.rate_typing_per_s, settings.rate_typing_burst),
        "presence": (settings.rate_presence_per_s, settings.rate_presence_burst),
        "connect": (settings.rate_connect_per_s, settings.rate_connect_burst),
        "media": (settings.rate_media_per_s, settings.rate_media_burst),
        "search": (settings.rate_search_per_s, settings.rate_search_burst),
    }


class RateLimiter(Protocol):
    async def check(self, kind: Kind, user_id: str) -> None:
        """Take one token of ``kind`` for ``user_id``; ``RateLimited`` when none is left."""


def _refuse(kind: str, wait_ms: float) -> RateLimited:
    return RateLimited(f"too many {kind} requests", retry_after=max(1, math.ceil(wait_ms / 1000)))


class NoLimits:
    async def check(self, kind: Kind, user_id: str) -> None:
        return None


class MemoryRateLimiter:
    """The same buckets in one process (unit tests)."""

    def __init__(
        self, limits: dict[str, tuple[float, int]], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    async def check(self, kind: Kind, user_id: str) -> None:
        rate, burst = self._limits[kind]
        now = self._clock()
        tokens, at = self._buckets.get((kind, user_id), (float(burst), now))
        tokens = min(float(burst), tokens + (now - at) * rate)
        if tokens < 1:
            self._buckets[(kind, user_id)] = (tokens, now)
            raise _refuse(kind, (1 - tokens) * 1000 / rate)
        self._buckets[(kind, user_id)] = (tokens - 1, now)


class RedisRateLimiter:
    """The checks of concurrent requests share pipelines (``RedisPipeliner``): one script call
    each, but one round trip and one pool checkout for many; a check was the largest part of
    a send's CPU in the gateway when each went alone."""

    def __init__(self, redis: Redis, limits: dict[str, tuple[float, int]]) -> None:
        self._limits = limits
        self._script = PipelinedScript(RedisPipeliner(redis), redis, TOKEN_BUCKET)

    async def check(self, kind: Kind, user_id: str) -> None:
        rate, burst = self._limits[kind]
        try:
            taken, wait_ms = await self._script(keys=[keys.rate_limit(kind, user_id)], args=[rate, burst])
        except RedisError as exc:
            log.debug("rate limiter unavailable (%r); letting %s through", exc, kind)
            return
        if not int(taken):
            raise _refuse(kind, float(wait_ms))


WS_PATH = "/v1/ws"


async def guard_upgrade(request: Any, settings: Settings) -> None:
    """Before a WebSocket upgrade (a plain HTTP answer on refusal): the page's origin, then
    the user's connection attempts."""
    check_origin(request.headers.get("origin"), settings.allowed_origins)
    await request.app.ctx.deps.limiter.check("connect", request.ctx.principal.user_id)


def check_origin(origin: str | None, allowed: list[str]) -> None:
    """A WebSocket upgrade from a browser page whose origin is not allowed: 403 before the
    upgrade. Clients that send no ``Origin`` (apps, servers) are not browsers and pass."""
    if allowed and origin is not None and origin.rstrip("/") not in {o.rstrip("/") for o in allowed}:
        raise Forbidden("origin not allowed")
