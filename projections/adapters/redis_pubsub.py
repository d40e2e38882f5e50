"""The gateway's pub/sub adapters: its routes (``GatewayRoutes``: which gateways hold a user's
sockets, read by the deliver stage) and, on a Redis Cluster, its subscriber.

The hub's pub/sub subscriber on a Redis Cluster: sharded channels (SSUBSCRIBE), read from
every node at once.

redis-py 8.1's asyncio ``ClusterPubSub`` does shard channels: ``ssubscribe`` opens one
connection per node that owns a subscribed channel's slot, and after a failover or a slot
migration it moves the subscriptions to the new owner by itself. What it lacks is a read over
all those connections: ``get_sharded_message(timeout=t)`` polls them in turn, each for up to
``t``, so a message on one node waits while another is polled. Here one reader task per node
connection (``get_sharded_message(target_node=...)``, which keeps the library's bookkeeping of
unsubscribes) feeds one queue, and ``get_message`` reads the queue: a message is handed over
as soon as it arrives, whichever node it came from.

Lost connections: redis-py reconnects and resubscribes a node's connection by itself, and
whatever was published meanwhile is gone; the hub must hear of it (``on_reconnect``, as in
single-instance mode), and a reader's error is handed to the hub's ``get_message`` too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub

from events import keys
from projections.adapters.redis_client import RedisClient

log = logging.getLogger(__name__)

OnReconnect = Callable[[object], Awaitable[None]]

# How long a gateway's entry in a user's route set lives unless pushed forward; the hub pushes
# it forward every third of that while it holds the user's sockets: three commands per held user
# per refresh, the largest part of an idle gateway's Redis work (docs/benchmarks.md, session 10
# after the merges: at 60 s, 10,000 idle sockets cost the gateway a quarter more idle CPU). An
# entry outliving its gateway costs a PUBLISH nobody reads, never a delivery.
ROUTE_TTL_S = 180.0
_CHUNK = 500  # users per pipeline when routes are added, removed or pushed forward


class GatewayRoutes:
    """This gateway's entries in its users' route sets (``keys.route``): a sorted set per user
    of the gateway ids holding their sockets, each scored by its expiry (ms). The deliver stage
    reads them (``projections.adapters.recent``) and publishes once per gateway on its channel
    (``keys.gateway_channel``) instead of once per user.

    ``subscribe`` and ``unsubscribe`` take user ids: the hub batches them with the same
    ``query_api.subscriptions.Subscriptions`` as its channels, so a route is added or removed
    by one pipeline per flush, decided from the hub's state at flush time. Each add also drops
    the set's expired entries (a gateway that died without removing its own), and keeps the key
    alive as long as its newest entry."""

    def __init__(
        self,
        redis: RedisClient,
        gateway_id: int,
        *,
        ttl_s: float = ROUTE_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self.gateway_id = gateway_id
        self.member = str(gateway_id)
        self.channel = keys.gateway_channel(gateway_id)
        self.ttl_s = ttl_s
        self._clock = clock

    async def subscribe(self, *user_ids: str) -> None:
        await self.add(user_ids)

    async def unsubscribe(self, *user_ids: str) -> None:
        for start in range(0, len(user_ids), _CHUNK):
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id in user_ids[start : start + _CHUNK]:
                    pipe.zrem(keys.route(user_id), self.member)
                await pipe.execute()

    async def add(self, user_ids: Iterable[str]) -> None:
        """Add (or push forward) this gateway in the route sets of ``user_ids``."""
        users = list(user_ids)
        ttl_ms = int(self.ttl_s * 1000)
        for start in range(0, len(users), _CHUNK):
            now_ms = int(self._clock() * 1000)
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id in users[start : start + _CHUNK]:
                    key = keys.route(user_id)
                    pipe.zremrangebyscore(key, "-inf", now_ms)
                    pipe.zadd(key, {self.member: now_ms + ttl_ms})
                    pipe.pexpire(key, ttl_ms)
                await pipe.execute()


class ShardedSubscriber:
    """The slice of ``PubSub`` the hub uses (``subscribe``, ``unsubscribe``, ``get_message``),
    over sharded channels of a Redis Cluster."""

    def __init__(self, cluster: RedisCluster, *, on_reconnect: OnReconnect | None = None) -> None:
        self._cluster = cluster
        self._pubsub: ClusterPubSub = cluster.pubsub()
        self._on_reconnect = on_reconnect
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        # node name -> its reader, for the per-node connections the ClusterPubSub holds
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._hooked: set[int] = set()

    def on_reconnect(self, callback: OnReconnect) -> None:
        self._on_reconnect = callback
        for node_pubsub in self._pubsub.node_pubsub_mapping.values():
            self._hook(node_pubsub)

    async def subscribe(self, *channels: str) -> None:
        # ssubscribe routes by the client's slot map, which a client that has not sent a
        # command yet has not loaded: no-op once loaded
        await self._cluster.initialize()
        await self._pubsub.ssubscribe(*channels)
        self._start_readers()

    async def unsubscribe(self, *channels: str) -> None:
        await self._pubsub.sunsubscribe(*channels)

    async def get_message(
        self,
        ignore_subscribe_messages: bool = False,
        timeout: float | None = 0.0,  # noqa: ASYNC109 - redis-py's signature
    ) -> dict[str, Any] | None:
        """The next message from any node (``smessage``), or None after ``timeout`` seconds;
        raises what a reader met (it keeps reading after a pause)."""
        # After a failover or a slot migration the ClusterPubSub moved channels to a node
        # connection of its own making: read that one too.
        self._start_readers()
        # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that
        # arrives as the queue hands over an item, and the hub's listener then never stops.
        if timeout is None:
            item = await self._queue.get()  # no timer per message (the hub reads this way)
        else:
            try:
                async with asyncio.timeout(timeout):
                    item = await self._queue.get()
            except TimeoutError:
                return None
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        readers = list(self._readers.values())
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        self._readers.clear()
        await self._pubsub.aclose()

    def _start_readers(self) -> None:
        for name, node_pubsub in self._pubsub.node_pubsub_mapping.items():
            self._hook(node_pubsub)
            task = self._readers.get(name)
            if task is None or task.done():
                self._readers[name] = asyncio.get_running_loop().create_task(
                    self._read(name), name=f"pubsub-shard-{name}"
                )

    def _hook(self, node_pubsub: PubSub) -> None:
        """Tell the hub when this node's connection comes back (redis-py resubscribed it)."""
        if self._on_reconnect is None or node_pubsub.connection is None:
            return
        if id(node_pubsub.connection) in self._hooked:
            return
        self._hooked.add(id(node_pubsub.connection))
        node_pubsub.connection.register_connect_callback(self._on_reconnect)

    async def _read(self, name: str) -> None:
        delay = 0.1
        while name in self._pubsub.node_pubsub_mapping:
            node = self._cluster.get_node(node_name=name)
            if node is None:
                break  # gone from the cluster; its channels moved to their new owner
            try:
                message = await self._pubsub.get_sharded_message(
                    ignore_subscribe_messages=True, timeout=1.0, target_node=node
                )
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - handed to the hub, which logs and catches up
                self._queue.put_nowait(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if message is not None:
                self._queue.put_nowait(message)
        # the node's last channel was unsubscribed (or it left the cluster): a later subscribe
        # on it starts a new reader
        self._readers.pop(name, None)
