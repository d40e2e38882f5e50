"""The notify role's two Redis reads and writes: which devices have an open socket, and which
messages a device was already notified of."""

from __future__ import annotations

from collections.abc import Sequence

from redis.exceptions import RedisError

from events import keys
from events.errors import Unavailable
from projections.adapters.redis_client import RedisClient

# How long a device remembers the messages it was notified of (a job read again after a crash
# or a rebalance is skipped within this time).
SENT_TTL_MS = 24 * 3600 * 1000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisOnlineDevices:
    """Devices with an open socket, from the presence store: a connection id starts with its
    device id and ``:`` (``query_api.presence``), and device ids never hold ``:``."""

    def __init__(self, redis: RedisClient) -> None:
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

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    async def sent_many(self, wanted: Sequence[tuple[str, str, int]]) -> set[tuple[str, str, int]]:
        """Those ``(user_id, device_id, message_id)`` already notified, in one round trip."""
        by_device: dict[tuple[str, str], list[int]] = {}
        for user_id, device_id, message_id in wanted:
            by_device.setdefault((user_id, device_id), []).append(message_id)
        if not by_device:
            return set()
        devices = list(by_device)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id, device_id in devices:
                    pipe.zmscore(
                        keys.push_sent(user_id, device_id), [str(m) for m in by_device[(user_id, device_id)]]
                    )
                replies = await pipe.execute()
        except RedisError as exc:
            raise Unavailable("push state unavailable") from exc
        out = set()
        for (user_id, device_id), scores in zip(devices, replies, strict=True):
            for message_id, score in zip(by_device[(user_id, device_id)], scores, strict=True):
                if score is not None:
                    out.add((user_id, device_id, message_id))
        return out

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
