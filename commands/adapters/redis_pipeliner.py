"""Automatic pipelining for independent Redis commands issued by many concurrent tasks.

Each ``await pipeliner.execute(*args)`` queues its command; the first one of a loop iteration
schedules a flush with ``call_soon``, so every command queued before the loop comes round goes
to Redis in one pipeline (no MULTI), and each caller gets its own reply or its own error.
Commands of one caller stay in its order (it awaits each); commands of different callers keep
the order they were queued in, as they would on one connection.

Why: redis-py's per-command client cost (pool checkout, retry wrapper, timeout, one round trip)
is most of a command's CPU in the gateway; at 500 sends/s the two idempotency commands of each
send were about a fifth of the gateway's CPU. Pipelined, the per-command cost is packing and
parsing only, and a burst of N sends costs one round trip instead of N. An idle gateway adds one
loop iteration per command, microseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from redis.exceptions import NoScriptError

from projections.adapters.redis_client import RedisClient

# A burst bigger than this is flushed in several pipelines, to bound one reply's size and the
# time one flush keeps the loop.
MAX_PIPELINE = 512


class RedisPipeliner:
    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._pending: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        # The flush of commands queued with ``queue_later`` while no flush was scheduled.
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def execute(self, *args: Any, **options: Any) -> Any:
        """Run one command (as ``Redis.execute_command``); raises what running it alone would."""
        return await self.queue(*args, **options)

    def queue(self, *args: Any, **options: Any) -> asyncio.Future[Any]:
        """Queue one command now (before any command queued after this call) and return the
        future of its reply, for a caller that need not wait for it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((args, options, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def queue_later(self, delay_s: float, *args: Any, **options: Any) -> asyncio.Future[Any]:
        """Queue one command that may wait up to ``delay_s`` for company: it goes out with the
        next flush (another caller's command) or, if none comes, after ``delay_s``. For
        commands nobody waits for: a busy process sends them in pipelines it sends anyway
        instead of a round trip each. Order is kept as with ``queue``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((args, options, future))
        if not self._scheduled and self._timer is None:
            self._timer = loop.call_later(delay_s, self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()  # (a no-op when it is the timer that runs this flush)
            self._timer = None
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), MAX_PIPELINE):
            task = asyncio.get_running_loop().create_task(self._run(pending[start : start + MAX_PIPELINE]))
            self._tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for args, options, _ in batch:
                    pipe.execute_command(*args, **options)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # handed to every caller, who translate it
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue  # its caller was cancelled
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


class PipelinedScript:
    """A Lua script run with EVALSHA through a ``RedisPipeliner``; loaded again when Redis lost
    it (a restart or SCRIPT FLUSH), as redis-py's own ``Script`` does."""

    def __init__(self, pipeliner: RedisPipeliner, redis: RedisClient, text: str) -> None:
        self._pipeliner = pipeliner
        self._redis = redis
        self._text = text
        self._sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._pipeliner.execute("EVALSHA", self._sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._redis.script_load(self._text)
            return await self._pipeliner.execute("EVALSHA", self._sha, len(keys), *keys, *args)
