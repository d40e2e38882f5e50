"""Per-user rate limits: a token bucket per user and kind of request (``send``, ``typing``,
``presence``, ``connect``, ``media``, ``search``), shared by every gateway process through
Redis (``commands.adapters.redis_rate_limits``). Refusals are ``RateLimited`` with
``retry_after`` in seconds: 429 with ``Retry-After`` over HTTP, an ``error`` frame
``rate_limited`` with ``retry_after`` over WebSocket (both rendered in ``query_api.errors``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal, Protocol

from events.errors import RateLimited

Kind = Literal["send", "typing", "presence", "connect", "media", "search"]


class RateLimiter(Protocol):
    async def check(self, kind: Kind, user_id: str) -> None:
        """Take one token of ``kind`` for ``user_id``; ``RateLimited`` when none is left."""

    def take(self, kind: Kind, user_id: str) -> Coroutine[Any, Any, None]:
        """``check``, asked now and answered when the result is awaited: on a pipelined store
        the request goes out with the commands the caller queues before its next ``await`` (a
        send's idempotency claim: one Redis round trip for both). The result must be awaited,
        or closed when the caller gives up."""


class limit_wins:  # lower case: it reads as a function, ``async with limit_wins(...)``
    """What fails inside is answered ``rate_limited`` instead when ``user_id`` is over its
    ``kind`` limit (the limiter asked alone): a request refused before its own, pipelined,
    check still takes a token, and the limit wins over every other answer.

    A class rather than ``contextlib.asynccontextmanager``: it wraps every send twice (the
    gateway's checks, then the send command's), and the generator-based manager costs
    1.8 µs a use against 0.5 here."""

    __slots__ = ("_kind", "_limiter", "_user_id")

    def __init__(self, limiter: RateLimiter, kind: Kind, user_id: str) -> None:
        self._limiter = limiter
        self._kind: Kind = kind
        self._user_id = user_id

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if kind is not None and issubclass(kind, Exception):
            await self._limiter.check(self._kind, self._user_id)
        return False  # what failed inside goes on, unless the limit raised first


def refuse(kind: str, wait_ms: float) -> RateLimited:
    return RateLimited(f"too many {kind} requests", retry_after=max(1, math.ceil(wait_ms / 1000)))


class NoLimits:
    async def check(self, kind: Kind, user_id: str) -> None:
        return None

    def take(self, kind: Kind, user_id: str) -> Coroutine[Any, Any, None]:
        return self.check(kind, user_id)


class MemoryRateLimiter:
    """The same buckets in one process (unit tests)."""

    def __init__(
        self, limits: dict[str, tuple[float, int]], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    async def check(self, kind: Kind, user_id: str) -> None:
        await self.take(kind, user_id)

    def take(self, kind: Kind, user_id: str) -> Coroutine[Any, Any, None]:
        # The bucket is decided now, as the Redis store's request goes out now.
        return _answer(self._take(kind, user_id))

    def _take(self, kind: Kind, user_id: str) -> RateLimited | None:
        rate, burst = self._limits[kind]
        now = self._clock()
        tokens, at = self._buckets.get((kind, user_id), (float(burst), now))
        tokens = min(float(burst), tokens + (now - at) * rate)
        if tokens < 1:
            self._buckets[(kind, user_id)] = (tokens, now)
            return refuse(kind, (1 - tokens) * 1000 / rate)
        self._buckets[(kind, user_id)] = (tokens - 1, now)
        return None


async def _answer(refused: RateLimited | None) -> None:
    if refused is not None:
        raise refused
