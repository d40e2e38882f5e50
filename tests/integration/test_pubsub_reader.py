"""The hub's direct pub/sub reader against the real Redis: the messages ``get_message`` would
return, subscribe confirmations and health checks left to redis-py, and a lost connection
connected and resubscribed again as redis-py does it (with the hub's connect callback)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from projections.adapters.redis_client import make_redis
from projections.adapters.redis_pubsub import DirectReader, message_reader
from tidings.settings import Settings


@pytest.fixture
async def redis(services: Settings) -> AsyncIterator[Redis]:
    client = make_redis(services.redis_host, services.redis_port, services.redis_db)
    yield client
    await client.aclose()


async def _next(reader: Any, skip_none: bool = True) -> dict[str, Any] | None:
    while True:
        message = await asyncio.wait_for(reader(), 5)
        if message is not None or not skip_none:
            return message


async def test_messages_as_get_message_returns_them_and_the_bookkeeping_is_redis_pys(redis: Redis) -> None:
    channel, other = f"test:ps:{uuid.uuid4().hex}", f"test:ps:{uuid.uuid4().hex}"
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        reader = message_reader(pubsub)
        assert isinstance(reader.__self__, DirectReader)  # type: ignore[attr-defined]
        await pubsub.subscribe(channel, other)
        await redis.publish(channel, b"one")
        # the subscribe confirmations went to handle_message (None: ignored), then the message
        assert await _next(reader) == {
            "type": "message",
            "pattern": None,
            "channel": channel.encode(),
            "data": b"one",
        }
        await pubsub.unsubscribe(other)
        await redis.publish(other, b"not heard")
        await redis.publish(channel, b"two")
        assert (await _next(reader) or {})["data"] == b"two"
        assert set(pubsub.channels) == {channel.encode()} and pubsub.subscribed
        # a health check's reply is dropped, as get_message drops it
        conn = pubsub.connection
        assert conn is not None
        await conn.send_command("PING", pubsub.HEALTH_CHECK_MESSAGE, check_health=False)
        assert await _next(reader, skip_none=False) is None
        # the same dict as the library's own read
        await redis.publish(channel, b"three")
        assert await asyncio.wait_for(pubsub.get_message(timeout=None), 5) == {
            "type": "message", "pattern": None, "channel": channel.encode(), "data": b"three",
        }  # fmt: skip
    finally:
        await pubsub.aclose()


class _Hub:
    """Stands for the hub's connect callback (redis-py keeps a weak reference to a bound method)."""

    def __init__(self) -> None:
        self.reconnects: list[object] = []

    async def resubscribed(self, connection: object) -> None:
        self.reconnects.append(connection)


async def test_a_lost_connection_raises_once_then_reads_resubscribed(redis: Redis) -> None:
    channel = f"test:ps:{uuid.uuid4().hex}"
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    hub = _Hub()
    reconnects = hub.reconnects

    try:
        reader = message_reader(pubsub)
        # the pub/sub connection's own id, asked before it subscribes
        await pubsub.execute_command("CLIENT", "ID")
        client_id = int(await pubsub.parse_response(block=True))
        await pubsub.subscribe(channel)
        assert pubsub.connection is not None
        pubsub.connection.register_connect_callback(hub.resubscribed)
        await redis.publish(channel, b"before")
        assert (await _next(reader) or {})["data"] == b"before"
        await redis.execute_command("CLIENT", "KILL", "ID", client_id)
        with pytest.raises(RedisConnectionError):  # not a timeout: the read sees the close
            await asyncio.wait_for(reader(), 5)
        # the next read connects again through get_message; redis-py resubscribes
        pending = asyncio.ensure_future(_next(reader))
        for _ in range(50):
            await asyncio.sleep(0.1)
            if reconnects:
                break
        assert reconnects, "the connect callback (the hub's catch-up) was not called"
        await redis.publish(channel, b"after")
        assert (await asyncio.wait_for(pending, 5) or {})["data"] == b"after"
    finally:
        await pubsub.aclose()
