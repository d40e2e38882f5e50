"""The pipeliner's own connection (``_Lane``) against the real Redis: replies in order through the
client's response callbacks, an error reply only its caller's, a lost connection's commands
written again on a new one, and a Redis that stops answering found by the stall watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import hiredis
import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from projections.adapters.redis_client import HiredisPackingConnection, make_redis
from projections.adapters.redis_pipeliner import LANE_ATTEMPTS, PipelinedScript, RedisPipeliner
from tidings.settings import Settings


def _key() -> str:
    return f"test:lane:{uuid.uuid4().hex}"


async def test_concurrent_commands_get_their_own_replies_through_the_callbacks(redis: Redis) -> None:
    p = RedisPipeliner(redis)
    k, n = _key(), _key()
    replies = await asyncio.gather(
        p.execute("SET", k, "v1", "NX", "EX", 60, "GET", get=True),  # no old value: None
        p.execute("SET", k, "v2", "EX", 60, "GET", get=True),  # the old value
        p.execute("SET", k, "v3", "XX", "KEEPTTL"),  # the SET callback: True
        p.execute("INCR", k),  # not an integer: this caller's error only
        p.execute("INCR", n),
        p.execute("GET", k),
        return_exceptions=True,
    )
    assert replies[:3] == [None, b"v1", True]
    assert isinstance(replies[3], ResponseError)
    assert replies[4:] == [1, b"v3"]
    # one flush, one write: every command of the loop turn went out together
    assert p._lane is not None and p._lane._replies == 6
    await redis.delete(k, n)


async def test_a_script_unknown_to_redis_is_loaded_and_run(redis: Redis) -> None:
    p = RedisPipeliner(redis)
    script = PipelinedScript(p, redis, f"return '{uuid.uuid4().hex}' .. ARGV[1]")
    # a script text never seen: EVALSHA answers NOSCRIPT (as after a Redis restart), then it is loaded
    reply = await script(keys=[_key()], args=["x"])
    assert reply.endswith(b"x")


async def _client_id(p: RedisPipeliner) -> int:
    return int(await p.execute("CLIENT", "ID"))


async def test_a_killed_connection_is_replaced_and_its_unanswered_commands_written_again(
    redis: Redis,
) -> None:
    p = RedisPipeliner(redis)
    first = await _client_id(p)
    # killed while idle: the next command goes out on a new connection
    await redis.execute_command("CLIENT", "KILL", "ID", first)
    await asyncio.sleep(0.1)
    second = await _client_id(p)
    assert second != first
    # killed while a command waits for its reply: written again on a new connection, answered
    k = _key()
    blocked = asyncio.ensure_future(p.execute("BLPOP", k, 5))
    await asyncio.sleep(0.2)
    await redis.execute_command("CLIENT", "KILL", "ID", second)
    await asyncio.sleep(0.3)
    await redis.rpush(k, "after")
    assert await asyncio.wait_for(blocked, 5) == (k.encode(), b"after")  # the BLPOP callback
    assert await _client_id(p) not in (first, second)


class _Silent:
    """A TCP peer that answers the connection's handshake like Redis and then never answers
    again: a Redis that hangs (not a fake of what it would say)."""

    def __init__(self) -> None:
        self.connections = 0
        self.commands = 0
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        parser = hiredis.Reader()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    if command[0].upper() in (b"CLIENT", b"SELECT", b"HELLO", b"PING"):
                        writer.write(b"+OK\r\n")
                    else:
                        self.commands += 1
        writer.close()


async def test_a_redis_that_stops_answering_fails_the_command_after_its_attempts() -> None:
    silent = _Silent()
    server = await asyncio.start_server(silent.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = BlockingConnectionPool(
        connection_class=HiredisPackingConnection, host="127.0.0.1", port=port, socket_timeout=0.2
    )
    client = Redis.from_pool(pool)
    try:
        p = RedisPipeliner(client)
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(p.execute("GET", "k"), 30)
        waited = time.monotonic() - started
        # written on LANE_ATTEMPTS connections, each given up after 0.2-0.25 s without a reply
        assert silent.commands == LANE_ATTEMPTS
        assert silent.connections == LANE_ATTEMPTS
        assert LANE_ATTEMPTS * 0.2 <= waited < 15
    finally:
        await client.aclose()
        server.close()


async def test_closing_sends_what_is_queued_and_leaves_no_connection_open(services: Settings) -> None:
    """A command whose flush is scheduled, and one waiting for company, both go out at the
    close; the flush that was scheduled finds nothing to send and connects nothing; after
    the client's close no connection of its pool is open (one opened after it would leak)."""
    client = make_redis(services.redis_host, services.redis_port, services.redis_db)
    p = RedisPipeliner(client)
    k, later = _key(), _key()
    try:
        assert await p.execute("PING") is True  # the lane is connected
        queued = p.queue("SET", k, "1", "EX", 60)  # its flush: the next loop iteration
        waiting = p.queue_later(10.0, "SET", later, "1", "EX", 60)
        await p.aclose()
        assert queued.result() is True and waiting.result() is True
        assert await client.exists(k, later) == 2
        await client.delete(k, later)
    finally:
        await client.aclose()
    await asyncio.sleep(0.05)  # the scheduled flush has run
    pool = client.connection_pool  # redis-py 8.1's pool lists (pinned in pyproject.toml)
    assert not [c for c in (*pool._available_connections, *pool._in_use_connections) if c.is_connected]
