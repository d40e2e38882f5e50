"""The pipeliner coalesces concurrent commands into one pipeline and answers each caller alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from projections.adapters.redis_pipeliner import MAX_PIPELINE, RedisPipeliner


class FakePipe:
    def __init__(self, owner: FakeRedis) -> None:
        self.owner = owner
        self.commands: list[tuple[Any, ...]] = []

    async def __aenter__(self) -> FakePipe:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def execute_command(self, *args: Any, **options: Any) -> None:
        self.commands.append(args)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        self.owner.pipelines.append(self.commands)
        if self.owner.down:
            raise RedisConnectionError("gone")
        return [ResponseError("bad") if c[0] == "BAD" else f"ok:{c[1]}" for c in self.commands]


class FakeRedis:
    def __init__(self) -> None:
        self.pipelines: list[list[tuple[Any, ...]]] = []
        self.down = False

    def pipeline(self, transaction: bool = True) -> FakePipe:
        assert transaction is False
        return FakePipe(self)


async def test_concurrent_commands_share_one_pipeline_and_get_their_own_replies() -> None:
    redis = FakeRedis()
    p = RedisPipeliner(redis)  # type: ignore[arg-type]
    replies = await asyncio.gather(p.execute("GET", "a"), p.execute("GET", "b"), p.execute("GET", "c"))
    assert replies == ["ok:a", "ok:b", "ok:c"]
    assert redis.pipelines == [[("GET", "a"), ("GET", "b"), ("GET", "c")]]


async def test_a_failing_command_fails_only_its_caller() -> None:
    redis = FakeRedis()
    p = RedisPipeliner(redis)  # type: ignore[arg-type]
    results = await asyncio.gather(p.execute("GET", "a"), p.execute("BAD", "b"), return_exceptions=True)
    assert results[0] == "ok:a" and isinstance(results[1], ResponseError)


async def test_a_lost_connection_fails_every_caller_of_the_pipeline() -> None:
    redis = FakeRedis()
    redis.down = True
    p = RedisPipeliner(redis)  # type: ignore[arg-type]
    results = await asyncio.gather(p.execute("GET", "a"), p.execute("GET", "b"), return_exceptions=True)
    assert all(isinstance(r, RedisConnectionError) for r in results)
    redis.down = False
    assert await p.execute("GET", "c") == "ok:c"  # the next flush works again


async def test_sequential_commands_and_large_bursts() -> None:
    redis = FakeRedis()
    p = RedisPipeliner(redis)  # type: ignore[arg-type]
    assert await p.execute("GET", "x") == "ok:x"
    assert await p.execute("GET", "y") == "ok:y"
    assert len(redis.pipelines) == 2
    n = MAX_PIPELINE + 3
    replies = await asyncio.gather(*(p.execute("GET", str(i)) for i in range(n)))
    assert replies == [f"ok:{i}" for i in range(n)]
    assert [len(b) for b in redis.pipelines[2:]] == [MAX_PIPELINE, 3]


@pytest.mark.parametrize("cancel_first", [True, False])
async def test_a_cancelled_caller_does_not_break_the_others(cancel_first: bool) -> None:
    redis = FakeRedis()
    p = RedisPipeliner(redis)  # type: ignore[arg-type]
    first = asyncio.ensure_future(p.execute("GET", "a"))
    second = asyncio.ensure_future(p.execute("GET", "b"))
    await asyncio.sleep(0)
    (first if cancel_first else second).cancel()
    results = await asyncio.gather(first, second, return_exceptions=True)
    kept = results[1] if cancel_first else results[0]
    assert kept == ("ok:b" if cancel_first else "ok:a")


async def test_a_later_command_rides_with_the_next_flush_or_goes_alone_after_its_delay() -> None:
    redis = FakeRedis()
    p = RedisPipeliner(redis)  # type: ignore[arg-type]
    mark = p.queue_later(10.0, "SET", "m1")
    await asyncio.sleep(0.01)
    assert redis.pipelines == [] and not mark.done()  # waits for company
    assert await p.execute("GET", "a") == "ok:a"
    assert redis.pipelines == [[("SET", "m1"), ("GET", "a")]]  # in the order queued
    assert mark.result() == "ok:m1"
    alone = p.queue_later(0.02, "SET", "m2")
    assert await asyncio.wait_for(alone, 1.0) == "ok:m2"  # nobody came: it went after its delay
    assert redis.pipelines[-1] == [("SET", "m2")]
    # a command queued meanwhile flushes it at once, and its timer sends nothing more
    p.queue_later(0.02, "SET", "m3")
    assert await p.execute("GET", "b") == "ok:b"
    await asyncio.sleep(0.05)
    assert redis.pipelines[2:] == [[("SET", "m3"), ("GET", "b")]]


async def test_closing_sends_a_waiting_command_at_once_and_refuses_later_ones() -> None:
    redis = FakeRedis()
    p = RedisPipeliner(redis)  # type: ignore[arg-type]
    mark = p.queue_later(10.0, "SET", "m1")
    await p.aclose()  # does not wait for the 10 s
    assert mark.result() == "ok:m1" and redis.pipelines == [[("SET", "m1")]]
    with pytest.raises(RedisConnectionError, match="closed"):
        await p.execute("GET", "a")
    with pytest.raises(RedisConnectionError, match="closed"):
        await p.queue_later(0.01, "SET", "m2")
    await asyncio.sleep(0.02)
    assert redis.pipelines == [[("SET", "m1")]]  # nothing went out after the close
    await p.aclose()  # a second close is a no-op


async def test_closing_with_a_flush_scheduled_sends_once_and_nothing_after() -> None:
    redis = FakeRedis()
    p = RedisPipeliner(redis)  # type: ignore[arg-type]
    queued = p.queue("SET", "a")  # its flush is scheduled for the next loop iteration
    await p.aclose()
    await asyncio.sleep(0.01)  # the scheduled flush runs now, with nothing left to send
    assert queued.result() == "ok:a" and redis.pipelines == [[("SET", "a")]]
