"""``IdempotencyStore`` on Redis: one key per ``(sender, client_msg_id)`` with a TTL.

Both commands go through a ``RedisPipeliner``: the claims and marks of concurrent sends share
pipelines (one round trip and one pool checkout for many), which is what a busy gateway's CPU
went to."""

from __future__ import annotations

import orjson
from redis.exceptions import RedisError

from commands.adapters.redis_pipeliner import RedisPipeliner
from commands.ports import SendRecord
from events import MessageSent, keys
from events.errors import Unavailable
from projections.adapters.redis_client import RedisClient


def _dump(record: SendRecord) -> bytes:
    return orjson.dumps({"event": record.event.model_dump(), "appended": record.appended})


def _load(raw: bytes) -> SendRecord:
    data = orjson.loads(raw)
    return SendRecord(MessageSent.model_validate(data["event"]), bool(data["appended"]))


class RedisIdempotencyStore:
    def __init__(self, redis: RedisClient, ttl_s: int) -> None:
        self._redis = RedisPipeliner(redis)
        self._ttl_s = ttl_s

    async def claim(self, sender_id: str, client_msg_id: str, record: SendRecord) -> SendRecord | None:
        key = keys.idempotency(sender_id, client_msg_id)
        try:
            # SET NX returns the old value with GET (Redis >= 7.0): one round trip, atomic.
            old = await self._redis.execute(
                "SET", key, _dump(record), "NX", "EX", self._ttl_s, "GET", get=True
            )
        except RedisError as exc:
            raise Unavailable("idempotency store unavailable") from exc
        if old is None:
            return None
        return _load(old if isinstance(old, bytes) else str(old).encode())

    async def mark_appended(self, sender_id: str, client_msg_id: str, record: SendRecord) -> None:
        key = keys.idempotency(sender_id, client_msg_id)
        try:
            await self._redis.execute("SET", key, _dump(record), "XX", "KEEPTTL")
        except RedisError as exc:
            raise Unavailable("idempotency store unavailable") from exc
