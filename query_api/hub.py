"""This process's WebSocket connections, and the pub/sub listener that feeds them.

A gateway subscribes to a user's delivery channel while it holds at least one of that user's
sockets. Each socket has a bounded queue and its own writer task, so one slow client never
stalls the listener or other clients: when its queue is full it is disconnected, and it
catches up with ``/v1/sync`` after reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from events import keys
from query_api.metrics import SLOW_CLIENT_DISCONNECTS, WS_CONNECTIONS

log = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 1013  # "try again later": the client fell too far behind


class Subscriber(Protocol):
    """The slice of redis-py's ``PubSub`` the hub uses (a fake implements it in tests)."""

    def subscribe(self, *args: Any) -> Awaitable[Any]: ...
    def unsubscribe(self, *args: Any) -> Awaitable[Any]: ...
    async def get_message(
        self,
        ignore_subscribe_messages: bool = ...,
        timeout: float | None = ...,  # noqa: ASYNC109 - redis-py's signature
    ) -> dict[str, Any] | None: ...


class Connection:
    def __init__(
        self,
        user_id: str,
        device_id: str,
        send: Callable[[bytes | str], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
        queue_size: int,
    ) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self._send = send
        self._close = close
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(queue_size)
        self.too_slow = False

    def push(self, frame: bytes) -> None:
        """Queue a frame for this socket without waiting; a full queue disconnects it."""
        if self.too_slow:
            return
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.too_slow = True
            SLOW_CLIENT_DISCONNECTS.inc()
            self._queue = asyncio.Queue(1)
            self._queue.put_nowait(None)

    async def run_writer(self) -> None:
        """Send queued frames in order until told to stop (``None``)."""
        while True:
            frame = await self._queue.get()
            if frame is None:
                if self.too_slow:
                    await self._close(CLOSE_TOO_SLOW, "send queue full; reconnect and sync")
                return
            # Text frames: the protocol is JSON text, and bytes would go out as binary.
            await self._send(frame.decode())

    def stop(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)


class Hub:
    def __init__(self, subscriber: Subscriber) -> None:
        self._subscriber = subscriber
        self._by_user: dict[str, set[Connection]] = {}
        self._lock = asyncio.Lock()
        # redis-py's PubSub has no connection until its first subscribe.
        self._subscribed_once = asyncio.Event()

    @property
    def connections(self) -> int:
        return sum(len(c) for c in self._by_user.values())

    async def register(self, conn: Connection) -> None:
        async with self._lock:
            conns = self._by_user.setdefault(conn.user_id, set())
            if not conns:
                await self._subscriber.subscribe(keys.user_channel(conn.user_id))
                self._subscribed_once.set()
            conns.add(conn)
        WS_CONNECTIONS.inc()

    async def unregister(self, conn: Connection) -> None:
        WS_CONNECTIONS.dec()
        async with self._lock:
            conns = self._by_user.get(conn.user_id)
            if conns is None:
                return
            conns.discard(conn)
            if not conns:
                del self._by_user[conn.user_id]
                await self._subscriber.unsubscribe(keys.user_channel(conn.user_id))

    def deliver(self, channel: str, frame: bytes) -> int:
        """Queue ``frame`` on every local socket of the channel's user; returns how many."""
        user_id = channel.removeprefix(keys.user_channel(""))
        conns = self._by_user.get(user_id, ())
        for conn in conns:
            conn.push(frame)
        return len(conns)

    async def listen(self, on_frame: Callable[[bytes], None] | None = None) -> None:
        """Forward pub/sub messages to sockets until cancelled; survives Redis restarts."""
        await self._subscribed_once.wait()
        delay = 0.1
        while True:
            try:
                message = await self._subscriber.get_message(ignore_subscribe_messages=True, timeout=1.0)
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down: pushes pause, sync covers the gap
                log.warning("pub/sub listener error (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            self.deliver(channel, message["data"])
            if on_frame is not None:
                on_frame(message["data"])
