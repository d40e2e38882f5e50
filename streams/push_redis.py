"""The notify role's two Redis reads and writes: which devices have an open socket, and which
messages a device was already notified of."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from events import keys
from events.errors import Unavailable

# How long a device remembers the messages it was notified of (a job read again after a crash
# or a rebalance is skipped within this time).
SENT_TTL_MS = 24 * 3600 * 1000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisOnlineDevices:
    """Devices with an open socket, from the presence store: a connection id starts with its
    device id and ``:`` (``query_api.presence``), and device ids never hold ``:``."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def online(self, user_ids: Sequence[str]) -> dict[str, set[str]]:
        if not user_ids:
            return {}
        try:
            now_s, now_us = await self._redis.time()
            now_ms = now_s * 1000 + now_us // 1000
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id in user_ids:
                    # Online and away sockets alike are open; entries past their expiry lapsed.
                    pipe.zrangebyscore(keys.presence_online(user_id), now_ms, "+inf")
                    pipe.zrangebyscore(keys.presence_away(user_id), now_ms, "+inf")
                replies = await pipe.execute()
        except RedisError as exc:
            raise Unavailable("presence store unavailable") from exc
        out: dict[str, set[str]] = {}
        for index, user_id in enumerate(user_ids):
            conns = [*replies[2 * index], *replies[2 * index + 1]]
            out[user_id] = {_text(c).split(":", 1)[0] for c in conns}
        return out


class RedisSentLog:
    """Per device, the message ids already notified (a sorted set by message time)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def sent(self, user_id: str, device_id: str, message_ids: Sequence[int]) -> set[int]:
        """Those of ``message_ids`` already notified to the device."""
        if not message_ids:
            return set()
        try:
            scores = await self._redis.zmscore(
                keys.push_sent(user_id, device_id), [str(m) for m in message_ids]
            )
        except RedisError as exc:
            raise Unavailable("push state unavailable") from exc
        return {m for m, score in zip(message_ids, scores, strict=True) if score is not None}

    async def record(
        self, user_id: str, device_id: str, messages: Sequence[tuple[int, int]], now_ms: int
    ) -> None:
        """``(message_id, ts)`` pairs were notified (or handed to a durable retry)."""
        key = keys.push_sent(user_id, device_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zadd(key, {str(m): ts for m, ts in messages})
                pipe.zremrangebyscore(key, "-inf", now_ms - SENT_TTL_MS)
                pipe.pexpire(key, SENT_TTL_MS)
                await pipe.execute()
        except RedisError as exc:
            raise Unavailable("push state unavailable") from exc
