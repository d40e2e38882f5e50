"""Media state that is not a fact yet, in Redis: pending presigned uploads and the per-user
daily byte count (shared by every gateway process, like the rate limits)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import orjson
from redis.exceptions import RedisError

from commands.media import PendingUpload
from events import keys
from events.errors import Unavailable
from projections.adapters.redis_client import RedisClient

DAY_S = 86400


class RedisPendingUploads:
    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    async def put(self, upload: PendingUpload, ttl_s: int) -> None:
        try:
            await self._redis.set(
                keys.media_upload(upload.media_id), orjson.dumps(dataclasses.asdict(upload)), ex=ttl_s
            )
        except RedisError as exc:
            raise Unavailable("upload store unavailable") from exc

    async def get(self, media_id: str) -> PendingUpload | None:
        try:
            raw = await self._redis.get(keys.media_upload(media_id))
        except RedisError as exc:
            raise Unavailable("upload store unavailable") from exc
        return PendingUpload(**orjson.loads(raw)) if raw else None

    async def drop(self, media_id: str) -> None:
        try:
            await self._redis.delete(keys.media_upload(media_id))
        except RedisError as exc:
            raise Unavailable("upload store unavailable") from exc


class RedisByteQuota:
    """Bytes per user per UTC day; each day's counter expires a day after the day ends."""

    def __init__(self, redis: RedisClient, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._clock = clock

    def _key(self, user_id: str) -> str:
        return keys.media_bytes(user_id, int(self._clock()) // DAY_S)

    async def used(self, user_id: str) -> int:
        try:
            raw = await self._redis.get(self._key(user_id))
        except RedisError as exc:
            raise Unavailable("quota store unavailable") from exc
        return int(raw or 0)

    async def charge(self, user_id: str, nbytes: int) -> int:
        key = self._key(user_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incrby(key, nbytes)
                pipe.expire(key, 2 * DAY_S)
                total, _ = await pipe.execute()
        except RedisError as exc:
            raise Unavailable("quota store unavailable") from exc
        return int(total)
