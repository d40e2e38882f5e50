"""The gateways' broadcast of the direct chats they turn encrypted (Redis pub/sub).

The gateway that appends an ``EncryptionEnabled`` writes it through to Cassandra, then publishes
the conversation id on ``keys.encryption_channel()`` (through the gateway's publish path). Every
gateway process listens here on a pub/sub connection of its own and tells its
``EncryptionFlags`` (``heard``), which may then trust "not encrypted" longer (``watching``).

Pub/sub delivers at most once: what is published while a listener is disconnected is lost. So
the flags watch only from the moment Redis confirms the subscription (the ``subscribe`` reply,
after the first connect and after each reconnect) until the connection is lost (an error, or a
reconnect, which redis-py makes by itself), and each change forgets every cached "not
encrypted": after it, the next send of each conversation reads Cassandra again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio import Redis

from events import keys
from projections.encryption import EncryptionFlags

log = logging.getLogger(__name__)


class EncryptionBroadcasts:
    def __init__(self, redis: Redis, flags: EncryptionFlags) -> None:
        self._redis = redis
        self._flags = flags
        self._channel = keys.encryption_channel()
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe (this opens the pub/sub connection) and listen until ``close``."""
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(self._channel)
        # Called on every reconnect, after redis-py re-sent the SUBSCRIBE: until Redis
        # confirms it (in the listener), broadcasts may be missed.
        assert self._pubsub.connection is not None
        self._pubsub.connection.register_connect_callback(self._reconnected)
        self._task = asyncio.create_task(self._listen(), name="encryption-broadcasts")

    async def _reconnected(self, connection: object) -> None:
        self._flags.watch(False)

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down: reads fall back to the short interval
                if self._flags.watching:
                    log.warning("encryption broadcasts lost (%r); flags re-read every second", exc)
                self._flags.watch(False)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if message is None:
                continue
            kind = message.get("type")
            if kind == "subscribe":
                self._flags.watch(True)
            elif kind == "message":
                data = message["data"]
                self._flags.heard(data.decode() if isinstance(data, bytes) else data)

    def local_address(self) -> str:
        """``host:port`` of this end of the pub/sub connection, as Redis's CLIENT LIST shows it."""
        writer = self._pubsub.connection._writer  # redis-py keeps the stream writer there
        host, port = writer.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    async def close(self) -> None:
        self._flags.watch(False)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pubsub is not None:
            await self._pubsub.aclose()
