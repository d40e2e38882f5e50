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

On a single Redis (``redis.asyncio.Redis``) the pipeliner writes to a connection of its own
(``_Lane``) instead of running a redis-py ``Pipeline`` per flush: a pipeline costs a task, the
blocking pool's checkout and release (a condition, a lock and a timeout), a ``wait_for`` task
around the write and a timeout around every reply, about 120 µs of the gateway's CPU per
flush on this box, and at a low send rate every flush carries one send's command
(docs/benchmarks.md, issue #19 session 11). The lane writes each flush's commands at once and
one reader task reads the replies in order, as Redis sends them. A Redis Cluster client (whose
pipelines split by node) and the unit tests' fakes keep the pipeline per flush.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import math
from collections.abc import Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from projections.adapters.redis_client import RedisClient

# A burst bigger than this is flushed in several pipelines, to bound one reply's size and the
# time one flush keeps the loop.
MAX_PIPELINE = 512
# How often a command is written before its connection's failures reach its caller: once, and
# the five retries of the clients' ``Retry`` (``projections.adapters.redis_client``).
LANE_ATTEMPTS = 6
# A lane with commands in flight and no reply for the clients' socket timeout (or this, when
# the client has none) is taken for dead: its commands are written again on a new connection.
LANE_STALL_S = 5.0
# The stall watchdog ticks this many times per stall timeout, and only while commands are in
# flight: about one timer per second on a busy gateway, none on an idle one.
_TICKS_PER_STALL = 4

Entry = list[Any]  # [args, options, future, attempts]


class RedisPipeliner:
    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._pending: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        # The flush of commands queued with ``queue_later`` while no flush was scheduled.
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lane = _Lane(redis) if isinstance(redis, Redis) else None
        self._closed = False

    async def execute(self, *args: Any, **options: Any) -> Any:
        """Run one command (as ``Redis.execute_command``); raises what running it alone would."""
        return await self.queue(*args, **options)

    def queue(self, *args: Any, **options: Any) -> asyncio.Future[Any]:
        """Queue one command now (before any command queued after this call) and return the
        future of its reply, for a caller that need not wait for it."""
        future = self._add(args, options)
        if not self._scheduled and not self._closed:
            self._scheduled = True
            future.get_loop().call_soon(self._flush)
        return future

    def queue_later(self, delay_s: float, *args: Any, **options: Any) -> asyncio.Future[Any]:
        """Queue one command that may wait up to ``delay_s`` for company: it goes out with the
        next flush (another caller's command) or, if none comes, after ``delay_s``. For
        commands nobody waits for: a busy process sends them in pipelines it sends anyway
        instead of a round trip each. Order is kept as with ``queue``."""
        future = self._add(args, options)
        if not self._scheduled and self._timer is None and not self._closed:
            self._timer = future.get_loop().call_later(delay_s, self._flush)
        return future

    def _add(self, args: tuple[Any, ...], options: dict[str, Any]) -> asyncio.Future[Any]:
        """The future of a command's reply, the command added to the next flush; failed at
        once when the pipeliner is closed."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(_closed_error())
        else:
            self._pending.append((args, options, future))
        return future

    async def aclose(self) -> None:
        """Send what is queued now (a command waiting for company included), wait for the
        replies of everything sent, and stop: a command queued afterwards fails at once with a
        ``ConnectionError``. Call it before the client's ``aclose``: a command sent after that
        would open a connection of the closed client's pool that nothing closes (and a mark
        waiting for company would be lost)."""
        if self._closed:
            return
        self._closed = True
        if self._pending:
            self._flush()
        if self._lane is not None:
            await self._lane.aclose()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _flush(self) -> None:
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()  # (a no-op when it is the timer that runs this flush)
            self._timer = None
        pending, self._pending = self._pending, []
        if not pending:
            return  # a flush scheduled before ``aclose`` sent what it would have
        if self._lane is not None:
            self._lane.send([[args, options, future, 0] for args, options, future in pending])
            return
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


def _closed_error() -> RedisConnectionError:
    return RedisConnectionError("the Redis pipeliner is closed")


class _Lane:
    """A connection of the client's pool kept by one pipeliner for good: each flush's commands
    are written to it at once, and one reader task reads the replies in the order Redis sends
    them (the order written), each to its caller's future, through the client's response
    callbacks as a pipeline would. Nothing waits per command or per flush besides the reply.

    Failures as redis-py's pipelines on the same client: a lost connection (a reset, a Redis
    restart, no reply within the socket timeout) writes the commands it had not answered again
    on a new connection, with the client's backoff, up to ``LANE_ATTEMPTS`` times; connecting
    uses the connection's own retries, and what still fails reaches the callers. An error reply
    reaches only its caller. The connection is the pool's (taken and never given back), so
    closing the client closes it."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._callbacks = redis.response_callbacks
        self._held: AbstractConnection | None = None  # taken from the pool, once
        self._conn: AbstractConnection | None = None  # connected and read from
        self._waiting: list[Entry] = []  # not written yet: the connection is (re)connecting
        self._in_flight: collections.deque[Entry] = collections.deque()  # written, in order
        self._connecting: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._failures = 0  # connections lost in a row, for the backoff
        self._backoff = ExponentialWithJitterBackoff(cap=2, base=0.1)
        timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
        self._stall_s = float(timeout) if timeout else LANE_STALL_S
        self._watchdog: asyncio.TimerHandle | None = None
        self._replies = 0
        self._replies_at_tick = 0
        self._quiet_ticks = 0

    def send(self, batch: list[Entry]) -> None:
        conn = self._conn
        if conn is None:
            self._waiting.extend(batch)
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
            return
        self._write(conn, batch)

    async def aclose(self) -> None:
        """Wait for the replies its callers still wait for (writing again what a lost connection
        had not answered, as always), then stop the reader, any reconnect and the stall
        watchdog, and give the connection back to the pool, disconnected."""
        while waited := [e[2] for e in (*self._in_flight, *self._waiting) if not e[2].done()]:
            await asyncio.wait(waited)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for task in (self._connecting, self._reader):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._connecting = self._reader = self._conn = None
        held, self._held = self._held, None
        if held is not None:
            await held.disconnect(nowait=True)
            await self._redis.connection_pool.release(held)

    def _write(self, conn: AbstractConnection, batch: list[Entry]) -> None:
        chunks: list[bytes] = []
        for entry in batch:
            try:
                chunks.extend(conn.pack_command(*entry[0]))
            except Exception as exc:  # noqa: BLE001 - an argument Redis cannot take: its caller's
                if not entry[2].done():
                    entry[2].set_exception(exc)
                continue
            entry[3] += 1
            self._in_flight.append(entry)
        if chunks:
            # redis-py's own writer (``send_packed_command`` would add a ``wait_for`` task per
            # write); what the transport cannot take now it buffers, and a connection that
            # stopped answering is found by the watchdog.
            conn._writer.writelines(chunks)  # type: ignore[union-attr]
            if self._watchdog is None:
                self._watchdog = asyncio.get_running_loop().call_later(
                    self._stall_s / _TICKS_PER_STALL, self._tick
                )

    async def _connect(self, lost: AbstractConnection | None = None) -> None:
        """Close ``lost`` (the connection that failed), then connect again when commands wait."""
        try:
            if lost is not None:
                with contextlib.suppress(Exception):
                    await lost.disconnect(nowait=True)
                if not self._waiting:
                    self._connecting = None
                    return  # the next flush connects
                await asyncio.sleep(self._backoff.compute(self._failures))
            if self._held is None:
                self._held = await self._redis.connection_pool.get_connection()
            conn = self._held
            await conn.connect()  # a no-op when connected; retried as the client's connections are
        except Exception as exc:  # noqa: BLE001 - handed to every caller waiting, who translate it
            self._connecting = None
            waiting, self._waiting = self._waiting, []
            for entry in waiting:
                if not entry[2].done():
                    entry[2].set_exception(exc)
            return
        self._connecting = None
        self._conn = conn
        self._reader = asyncio.get_running_loop().create_task(self._read(conn))
        waiting, self._waiting = self._waiting, []
        self._write(conn, waiting)

    async def _read(self, conn: AbstractConnection) -> None:
        in_flight, callbacks = self._in_flight, self._callbacks
        while True:
            try:
                reply: Any = await conn.read_response(timeout=math.inf)
            except ResponseError as exc:
                reply = exc  # an error reply: its caller's alone
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the connection is lost: written again elsewhere
                self._lost(conn, exc)
                return
            self._replies += 1
            self._failures = 0
            if not in_flight:
                self._lost(conn, InvalidResponse("a reply to no command"))
                return
            args, options, future, _ = in_flight.popleft()
            if future.done():
                continue  # its caller was cancelled
            if isinstance(reply, Exception):
                future.set_exception(reply)
                continue
            callback = callbacks.get(args[0])
            if callback is not None:
                try:
                    reply = callback(reply, **{k: v for k, v in options.items() if k != "keys"})
                except Exception as exc:  # noqa: BLE001 - its caller's, as in a pipeline
                    future.set_exception(exc)
                    continue
            future.set_result(reply)

    def _tick(self) -> None:
        """While commands are in flight: a connection with no reply for the stall timeout is lost."""
        self._watchdog = None
        conn = self._conn
        if conn is None or not self._in_flight:
            self._quiet_ticks = 0
            return
        self._quiet_ticks = self._quiet_ticks + 1 if self._replies == self._replies_at_tick else 0
        self._replies_at_tick = self._replies
        # More ticks than fit in the timeout: the first quiet one may have come just after a write.
        if self._quiet_ticks > _TICKS_PER_STALL:
            self._quiet_ticks = 0
            if self._reader is not None:
                self._reader.cancel()
            self._lost(conn, RedisTimeoutError(f"no reply from Redis for {self._stall_s:g} s"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(self._stall_s / _TICKS_PER_STALL, self._tick)

    def _lost(self, conn: AbstractConnection, exc: Exception) -> None:
        """Close ``conn``; write what it had not answered again on a new connection, or hand the
        error to the callers whose commands were written often enough (or that a reconnect
        would not help: a reply the lane cannot read)."""
        if conn is not self._conn:
            return
        self._conn = None
        self._reader = None
        self._failures += 1
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        retry = isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError))
        again: list[Entry] = []
        for entry in self._in_flight:
            if entry[2].done():
                continue
            if retry and entry[3] < LANE_ATTEMPTS:
                again.append(entry)
            else:
                entry[2].set_exception(exc)
        self._in_flight.clear()
        self._waiting[:0] = again  # before what came meanwhile: the order they were queued in
        # Nothing else connects meanwhile: a flush finds ``_connecting`` set and waits with it.
        self._connecting = asyncio.get_running_loop().create_task(self._connect(lost=conn))


class PipelinedScript:
    """A Lua script run with EVALSHA through a ``RedisPipeliner``; loaded again when Redis lost
    it (a restart or SCRIPT FLUSH), as redis-py's own ``Script`` does."""

    def __init__(self, pipeliner: RedisPipeliner, redis: RedisClient, text: str) -> None:
        self._pipeliner = pipeliner
        self._redis = redis
        self._text = text
        self._sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        return await self.queue(keys, args)

    def queue(self, keys: list[str], args: list[Any]) -> Coroutine[Any, Any, Any]:
        """Queue the call now (with whatever the caller queues before its next ``await``: one
        flush, one round trip) and return what awaits its reply; it must be awaited (or closed)."""
        reply = self._pipeliner.queue("EVALSHA", self._sha, len(keys), *keys, *args)
        return self._reply(reply, keys, args)

    async def _reply(self, reply: asyncio.Future[Any], keys: list[str], args: list[Any]) -> Any:
        try:
            return await reply
        except NoScriptError:
            await self._redis.script_load(self._text)
            return await self._pipeliner.execute("EVALSHA", self._sha, len(keys), *keys, *args)
