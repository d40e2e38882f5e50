"""``ToDeviceQueue`` on Redis: one stream per device, trimmed to its bound and its age on every
add (exact trims, so the bound is the bound), the key expiring ``ttl_s`` after the last add."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from events import keys
from events.errors import Unavailable
from projections.adapters.redis_client import RedisClient


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisToDevice:
    def __init__(self, redis: RedisClient, *, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._clock = clock

    def _oldest_kept(self, ttl_s: int) -> str:
        return f"{max(0, int((self._clock() - ttl_s) * 1000))}-0"

    async def add(self, user_id: str, device_id: str, frame: bytes, *, max_len: int, ttl_s: int) -> str:
        key = keys.to_device(user_id, device_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xadd(key, {"f": frame}, maxlen=max_len, approximate=False)
                pipe.xtrim(key, minid=self._oldest_kept(ttl_s), approximate=False)
                pipe.expire(key, ttl_s)
                position, _, _ = await pipe.execute()
        except RedisError as exc:
            raise Unavailable("the to-device queue is unavailable") from exc
        return _text(position)

    async def after(
        self, user_id: str, device_id: str, position: str | None, limit: int
    ) -> list[tuple[str, bytes]]:
        key = keys.to_device(user_id, device_id)
        oldest = self._oldest_kept(self._ttl_s)
        start = f"({position}" if position is not None else "-"
        try:
            rows = await self._redis.xrange(key, min=start, max="+", count=limit)
        except RedisError as exc:
            raise Unavailable("the to-device queue is unavailable") from exc
        out = []
        for entry_id, fields in rows or []:
            text = _text(entry_id)
            if fields and tuple(map(int, text.split("-"))) >= tuple(map(int, oldest.split("-"))):
                frame = fields.get(b"f", fields.get("f", b""))
                out.append((text, frame if isinstance(frame, bytes) else frame.encode()))
        return out

    async def acknowledge(self, user_id: str, device_id: str, position: str) -> None:
        ms, seq = position.split("-")
        try:
            # MINID keeps ids >= the one given: the next id after ``position``.
            await self._redis.xtrim(
                keys.to_device(user_id, device_id), minid=f"{ms}-{int(seq) + 1}", approximate=False
            )
        except RedisError as exc:
            raise Unavailable("the to-device queue is unavailable") from exc
