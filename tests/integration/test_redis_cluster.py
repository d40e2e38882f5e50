"""Every Redis adapter on a real Redis Cluster (six nodes, three masters: the launcher's
``RedisCluster``, started for this test run on ports of its own by the ``redis_cluster``
fixture): the same contracts as on one Redis, each script and transaction on a cluster that
refuses a cross-slot call, the pipelines split per node, and a message delivered through
sharded pub/sub (SPUBLISH, SSUBSCRIBE) to a gateway's hub."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from redis.asyncio import RedisCluster as AsyncRedisCluster

from commands.adapters.redis_idempotency import RedisIdempotencyStore
from commands.adapters.redis_locks import RedisLocks
from commands.adapters.redis_media import RedisByteQuota, RedisPendingUploads
from commands.adapters.redis_presence import CHUNK, RedisPresence
from commands.adapters.redis_rate_limits import RedisRateLimiter
from commands.adapters.redis_to_device import RedisToDevice
from commands.adapters.worker_ids import WorkerIdLease
from commands.media import PendingUpload
from commands.presence import Beat
from events import DeviceKeysPublished, PresenceChanged, keys
from projections.adapters.device_lists import DeviceListNotices, RedisDeviceLists
from projections.adapters.presence import PresencePushes
from projections.adapters.recent import RedisCacheAndPush
from projections.adapters.redis_client import redis_from
from projections.adapters.redis_pubsub import ShardedSubscriber
from projections.delivery import MESSAGE
from projections.roster import Entry, Roster
from query_api.hub import Connection, Hub
from streams.adapters.push_redis import RedisOnlineDevices, RedisSentLog
from tests.contracts import (
    PRESENCE_TTL_MS,
    IdempotencyContract,
    LocksContract,
    PresenceStoreContract,
    RateLimiterContract,
    RecentContract,
    spread_ids,
)
from tests.factories import message_sent
from tests.integration.test_presence_store import RealClock
from tests.integration.test_stores import a_retried_take_holds_the_lock
from tests.polling import until as _until
from tests.unit.test_hub import FakeSocket
from tidings.services.redis_cluster import NODES, SLOTS, RedisCluster
from tidings.settings import Settings


@pytest.fixture
async def client(redis_cluster: Settings) -> AsyncIterator[Any]:
    c = redis_from(redis_cluster.redis_cluster, "", 0, 0)
    assert isinstance(c, AsyncRedisCluster)
    yield c
    await c.aclose()


def _id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _direct_only() -> Roster:
    async def load(cid: str, threshold: int) -> Entry:
        raise AssertionError("direct chats need no lookup")

    return Roster(load, threshold=500)


# The launcher


def _roles(port: int) -> list[tuple[int, str]]:
    """(port, "master" or "slave") of every node, as the node on ``port`` sees them."""
    with redis.Redis(port=port, decode_responses=True) as node:
        nodes = node.cluster("NODES")
    out = []
    for address, fields in nodes.items():
        flags = set(fields["flags"].split(","))
        out.append((int(address.split("@")[0].rsplit(":", 1)[1]), "master" if "master" in flags else "slave"))
    return out


def test_the_launcher_formed_three_masters_with_a_replica_each_and_up_again_reuses_them(
    redis_cluster: Settings,
) -> None:
    cluster = RedisCluster(redis_cluster)
    infos = cluster.infos()
    assert [i["cluster_state"] for i in infos] == ["ok"] * NODES
    assert {int(i["cluster_slots_assigned"]) for i in infos} == {SLOTS}
    roles = [role for _, role in _roles(cluster.nodes[0].port)]
    assert sorted(roles) == ["master"] * 3 + ["slave"] * 3
    statuses = cluster.up(echo=lambda _: None)  # everything running: nothing started or formed
    assert [s.started_by_us for s in statuses] == [False] * NODES


def test_a_node_restarted_from_its_folder_rejoins_the_cluster(redis_cluster: Settings) -> None:
    cluster = RedisCluster(redis_cluster)
    replica_port = next(port for port, role in _roles(cluster.nodes[0].port) if role == "slave")
    replica = next(n for n in cluster.nodes if n.port == replica_port)
    replica.down(echo=lambda _: None)
    started = time.monotonic()
    cluster.up(echo=lambda _: None)  # starts the one node, finds the cluster formed, waits for ok
    assert replica.info() is not None and replica.info()["cluster_known_nodes"] == str(NODES)  # type: ignore[index]
    assert time.monotonic() - started < 30


async def test_the_cluster_refuses_a_cross_slot_script_which_is_why_keys_are_tagged(client: Any) -> None:
    # The check the hash tags exist for: were presence's keys untagged, this is what every
    # sweep would meet.
    a, b = "presence:live-a", "presence:live-b"
    assert client.keyslot(a) != client.keyslot(b)
    with pytest.raises(Exception, match=r"same (key )?slot|CROSSSLOT"):
        await client.eval("return redis.call('EXISTS', KEYS[1], KEYS[2])", 2, a, b)


# The contracts, on the cluster


class TestClusterLocks(LocksContract):
    @pytest.fixture
    def locks(self, client: Any) -> RedisLocks:
        return RedisLocks(client)

    async def test_a_take_retried_after_its_reply_was_lost_holds_the_lock(self, client: Any) -> None:
        await a_retried_take_holds_the_lock(client)


async def test_a_new_client_routes_its_first_concurrent_commands_by_slot(redis_cluster: Settings) -> None:
    """A new client's first commands, issued at once, each go to their key's master: none is
    answered MOVED (redis-py routed them to its default node before it knew the slots; five
    MOVEDs close every connection, under the commands of other tasks)."""

    def moved() -> int:  # MOVED answers given, by every node's own count
        total = 0
        for node in RedisCluster(redis_cluster).nodes:
            with redis.Redis(host=node.host, port=node.port, decode_responses=True) as plain:
                total += int(plain.info("errorstats").get("errorstat_MOVED", {}).get("count", 0))
        return total

    c = redis_from(redis_cluster.redis_cluster, "", 0, 0)
    assert isinstance(c, AsyncRedisCluster)
    try:
        names = [_id("route") for _ in range(12)]
        before = moved()
        await asyncio.gather(*(c.set(name, "v", px=5_000) for name in names))
        assert moved() == before
        for name in names:
            owner = c.nodes_manager.get_node_from_slot(c.keyslot(name))
            with redis.Redis(host=owner.host, port=int(owner.port)) as node:  # a plain client: no redirects
                assert node.get(name) == b"v"
    finally:
        await c.aclose()


class TestClusterRateLimiter(RateLimiterContract):
    @pytest.fixture
    def limiter(self, client: Any) -> Any:
        return lambda limits: RedisRateLimiter(client, limits)


class TestClusterIdempotency(IdempotencyContract):
    @pytest.fixture
    async def idem(self, client: Any) -> AsyncIterator[RedisIdempotencyStore]:
        store = RedisIdempotencyStore(client, ttl_s=60)
        yield store
        await store.aclose()  # its marks out before the client closes


class TestClusterRecent(RecentContract):
    @pytest.fixture
    def recent(self, client: Any) -> RedisCacheAndPush:
        return RedisCacheAndPush(client, size=5, roster=None)


class TestClusterPresence(PresenceStoreContract):
    @pytest.fixture
    def clock(self) -> RealClock:
        return RealClock()

    @pytest.fixture
    async def presence(self, client: Any) -> AsyncIterator[RedisPresence]:
        store = RedisPresence(client, ttl_ms=PRESENCE_TTL_MS)
        yield store
        await store.aclose()


async def test_one_presence_call_reports_users_of_every_shard_and_the_reaper_finds_them(client: Any) -> None:
    # More users than a chunk, spread over all sixteen shards (so over all three masters).
    store = RedisPresence(client, ttl_ms=1000)
    # Drawn until every shard has one: 107 random ids miss a shard about once in 60 runs.
    users: list[str] = []
    while len(users) < 2 * CHUNK + 7 or len({keys.presence_shard(u) for u in users}) < keys.PRESENCE_SHARDS:
        users.append(_id("p"))
    changes = await store.set([Beat(u, "c1", "online", 0) for u in users])
    assert sorted(c.user_id for c in changes) == sorted(users)
    assert {v.state for v in await store.read(users)} == {"online"}
    await asyncio.sleep(1.3)
    reaped: list[PresenceChanged] = []
    for _ in range(20):
        reaped += [c for c in await store.reap(10_000) if c.user_id in users]
        if len(reaped) == len(users):
            break
        await asyncio.sleep(0.2)
    assert sorted(c.user_id for c in reaped) == sorted(users) and {c.state for c in reaped} == {"offline"}
    online = await RedisOnlineDevices(client).online(users[:3])  # the push workers' read
    assert all(not devices for devices in online.values())


async def test_to_device_queue_media_quota_and_uploads_on_the_cluster(client: Any) -> None:
    user = _id("q")
    queue = RedisToDevice(client, ttl_s=3600)
    positions = [await queue.add(user, "d", f"f{i}".encode(), max_len=5, ttl_s=3600) for i in range(7)]
    assert [f for _, f in await queue.after(user, "d", None, 100)] == [b"f2", b"f3", b"f4", b"f5", b"f6"]
    await queue.acknowledge(user, "d", positions[4])
    assert [f for _, f in await queue.after(user, "d", None, 100)] == [b"f5", b"f6"]

    quota = RedisByteQuota(client)
    assert await quota.charge(user, 100) == 100 and await quota.charge(user, 23) == 123
    assert await quota.used(user) == 123

    uploads = RedisPendingUploads(client)
    upload = PendingUpload(
        media_id=_id("m"),
        uploader_id=user,
        object_key="k",
        content_type="image/png",
        size=5,
        sha256="0" * 64,
        expires_ts=int(time.time()) + 60,
    )
    await uploads.put(upload, ttl_s=60)
    assert await uploads.get(upload.media_id) == upload
    await uploads.drop(upload.media_id)
    assert await uploads.get(upload.media_id) is None


async def test_worker_id_lease_is_taken_renewed_and_released_on_the_cluster(client: Any) -> None:
    lease = await WorkerIdLease.acquire(client, ttl_s=5)
    try:
        assert lease.usable()
        assert await lease.renew()
        assert await client.get(keys.snowflake_lease(lease.worker_id)) is not None
    finally:
        await lease.release()
    assert await client.get(keys.snowflake_lease(lease.worker_id)) is None


async def test_push_sent_log_pipelines_across_nodes(client: Any) -> None:
    log = RedisSentLog(client)
    wanted = [(_id("u"), "d1", 1), (_id("u"), "d2", 2), (_id("u"), "d3", 3)]
    assert await log.sent_many(wanted) == set()
    for user, device, mid in wanted[:2]:
        now_ms = int(time.time() * 1000)
        await log.record(user, device, [(mid, now_ms)], now_ms)
    assert await log.sent_many(wanted) == set(wanted[:2])


# Delivery through sharded pub/sub


async def _hub_on(client: Any) -> tuple[Hub, ShardedSubscriber, asyncio.Task[None]]:
    async def no_groups(user_id: str) -> set[str]:
        return set()

    subscriber = ShardedSubscriber(client)
    hub = Hub(subscriber, no_groups, shards=4)
    await hub.start()
    return hub, subscriber, asyncio.create_task(hub.listen())


async def test_a_message_reaches_a_gateway_hub_through_sharded_pubsub(client: Any) -> None:
    hub, subscriber, listener = await _hub_on(client)
    alice, bob = _id("a"), _id("b")
    sockets = {u: FakeSocket([]) for u in (alice, bob)}
    try:
        for user, sock in sockets.items():
            await hub.register(Connection(user, "d", sock, queue_size=10))
        # the two users' channels are sharded to different slots (very likely different nodes)
        assert client.keyslot(keys.user_channel(alice)) != client.keyslot(keys.user_channel(bob))
        # route sets are a single instance's (docs/architecture.md): on a cluster the deliver
        # stage reads none and publishes on the users' channels, even with one left behind
        await client.zadd(keys.route(alice), {"7": time.time() * 1000 + 60_000})
        [mid] = spread_ids(1, step_ms=1)
        cid = f"dm:{min(alice, bob)}:{max(alice, bob)}"
        await RedisCacheAndPush(client, size=5, roster=_direct_only()).apply(
            [message_sent(mid, conversation_id=cid)]
        )
        await _until(lambda: all(s.frames for s in sockets.values()))
        for sock in sockets.values():
            assert len(sock.frames) == 1 and str(mid).encode() in sock.frames[0]
        # the deliver worker's cache write happened too, on the conversation's node
        assert [int(m["message_id"]) for m in await RedisCacheAndPush(client, 5, roster=None).all(cid)] == [
            mid
        ]

        # device-list notices and presence pushes (pipelines of SPUBLISH and stream writes)
        async def contacts(user_id: str) -> set[str]:
            return {bob}

        await DeviceListNotices(client, contacts).apply([_device_keys_published(alice)])
        await _until(lambda: len(sockets[bob].frames) == 2 and len(sockets[alice].frames) == 2)
        assert alice.encode() in sockets[bob].frames[1] and alice.encode() in sockets[alice].frames[1]
        assert (await RedisDeviceLists(client).after(bob, "0-0", 10))[0] == [alice]
        await PresencePushes(client).apply(
            [PresenceChanged(user_id=alice, state="online", last_seen=None, at=int(time.time() * 1e6))]
        )  # nobody watches alice: published, delivered to no socket
        # a frame on a user channel straight from the gateway (typing, to-device)
        async with client.pipeline(transaction=False) as pipe:
            pipe.spublish(keys.user_channel(alice), MESSAGE + b'{"type":"hello"}')
            await pipe.execute()
        await _until(lambda: len(sockets[alice].frames) == 3)
        assert sockets[alice].frames[2] == b'{"type":"hello"}'
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await subscriber.aclose()


async def test_a_plain_publish_is_not_what_the_sharded_hub_hears(client: Any) -> None:
    # The two kinds of channel are separate in Redis 7: a publisher left on PUBLISH would
    # reach nobody on a cluster, which this test would show.
    hub, subscriber, listener = await _hub_on(client)
    carol = _id("c")
    sock = FakeSocket([])
    try:
        await hub.register(Connection(carol, "d", sock, queue_size=10))
        await client.publish(keys.user_channel(carol), MESSAGE + b"plain")
        async with client.pipeline(transaction=False) as pipe:
            pipe.spublish(keys.user_channel(carol), MESSAGE + b"sharded")
            await pipe.execute()
        await _until(lambda: bool(sock.frames))
        await asyncio.sleep(0.3)
        assert sock.frames == [b"sharded"]
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await subscriber.aclose()


def _device_keys_published(user_id: str) -> DeviceKeysPublished:
    return DeviceKeysPublished(
        user_id=user_id,
        device_id="d1",
        ts=int(time.time() * 1000),
        identity_key="i",
        signing_key="s",
        signature="x",
    )


async def test_cross_slot_transactions_are_refused_so_each_adapter_keeps_to_one_key(client: Any) -> None:
    async with client.pipeline(transaction=True) as pipe:
        pipe.set("tx-a", 1)
        pipe.set("tx-b", 1)
        with pytest.raises(Exception, match=r"slot|CROSSSLOT"):
            await pipe.execute()
