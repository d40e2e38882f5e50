"""Deliveries routed to gateways, not users, on the real (single-instance) Redis: the route
sets the gateways keep (``GatewayRoutes``), the deliver stage's script that reads them and
publishes once per gateway (``RedisCacheAndPush``), and a hub on a real pub/sub connection that
hands a routed payload to its sockets as the same frames a user's channel brings."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

from events import ChatEvent, keys
from projections.adapters.recent import RedisCacheAndPush
from projections.adapters.redis_pubsub import GatewayRoutes
from projections.delivery import routed
from projections.roster import Entry, Roster
from projections.wire import MESSAGE, message_frame, message_json
from query_api.hub import Connection, Hub
from tests.contracts import spread_ids
from tests.factories import message_sent, receipt_recorded


def _roster() -> Roster:
    async def load(cid: str, threshold: int) -> Entry:
        raise AssertionError("direct chats need no lookup")

    return Roster(load, threshold=500)


def _users(n: int) -> list[str]:
    # Pub/sub channels are shared by every database of the Redis (other test runs publish
    # too): names of this test's own. Sorted, as a direct chat's members are.
    tag = uuid.uuid4().hex[:10]
    return sorted(f"u{tag}{i}" for i in range(n))


def _gateway_ids(n: int) -> list[int]:
    return random.sample(range(1_000_000, 2_000_000), n)


async def _heard(pubsub: Any, wait_s: float = 1.0) -> list[tuple[str, bytes]]:
    """Everything published on ``pubsub``'s channels within ``wait_s`` (a read that skips a
    subscribe confirmation also answers None: read until the time is up)."""
    got: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            got.append((message["channel"].decode(), message["data"]))
    return got


async def test_a_direct_message_goes_once_to_the_gateway_holding_both_members(redis: Any) -> None:
    alice, bob = _users(2)
    [gid] = _gateway_ids(1)
    await GatewayRoutes(redis, gid).add([alice, bob])
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.gateway_channel(gid), keys.user_channel(alice), keys.user_channel(bob))
    [mid] = spread_ids(1, step_ms=1)
    event = message_sent(mid, conversation_id=f"dm:{alice}:{bob}", sender_id=alice)
    await RedisCacheAndPush(redis, 5, roster=_roster()).apply([event])
    heard = await _heard(pubsub)
    await pubsub.aclose()
    frame = MESSAGE + message_frame(message_json(event))
    assert heard == [(keys.gateway_channel(gid), routed([alice, bob], frame))]
    cached = await RedisCacheAndPush(redis, 5, roster=None).all(event.conversation_id)
    assert [m["message_id"] for m in cached] == [str(mid)]  # and cached by the same script


async def test_members_on_several_gateways_expired_and_removed_entries_and_no_route(redis: Any) -> None:
    alice, bob, carol, dave = _users(4)
    g1, g2, g3, g4 = _gateway_ids(4)
    await GatewayRoutes(redis, g1).add([alice, bob])
    await GatewayRoutes(redis, g2).add([bob])
    # a gateway that died long ago without removing its entry (its expiry is in the past)
    await GatewayRoutes(redis, g3, ttl_s=1, clock=lambda: time.time() - 120).add([alice, carol])
    removed = GatewayRoutes(redis, g4)
    await removed.add([carol])
    await removed.unsubscribe(carol)
    assert await redis.zscore(keys.route(carol), str(g4)) is None
    pubsub = redis.pubsub()
    channels = [keys.gateway_channel(g) for g in (g1, g2, g3, g4)]
    await pubsub.subscribe(*channels, *(keys.user_channel(u) for u in (alice, bob, carol, dave)))
    mid1, mid2 = spread_ids(2, step_ms=1)
    dm1, dm2 = f"dm:{alice}:{bob}", f"dm:{carol}:{dave}"
    receipt = receipt_recorded(mid1, conversation_id=dm1, user_id=bob, device_id="d", status="read", ts=1)
    events: list[ChatEvent] = [message_sent(mid1, conversation_id=dm1, sender_id=alice), receipt]
    events.append(message_sent(mid2, conversation_id=dm2, sender_id=carol))
    await RedisCacheAndPush(redis, 5, roster=_roster()).apply(events)
    heard = await _heard(pubsub)
    await pubsub.aclose()
    m1 = MESSAGE + message_frame(message_json(events[0]))
    m2 = MESSAGE + message_frame(message_json(events[2]))
    by_channel: dict[str, list[bytes]] = {}
    for channel, data in heard:
        by_channel.setdefault(channel, []).append(data)
    [receipt_frame] = [d for d in by_channel[keys.gateway_channel(g2)] if d != routed([bob], m1)]
    assert by_channel == {
        keys.gateway_channel(g1): [
            routed([alice, bob], m1),
            routed([alice, bob], receipt_frame[len(bob) + 1 :]),
        ],
        keys.gateway_channel(g2): [routed([bob], m1), receipt_frame],
        # carol's only entries expired or were removed, dave never had one: their own channels
        keys.user_channel(carol): [m2],
        keys.user_channel(dave): [m2],
    }


async def test_a_route_set_lives_as_long_as_its_newest_entry(redis: Any) -> None:
    # Every gateway gives its entries the same TTL (ROUTE_TTL_S), so the key's expiry, set at
    # each add to that TTL from now, is never before any entry's.
    [alice] = _users(1)
    g1, g2 = _gateway_ids(2)
    now = [time.time()]
    await GatewayRoutes(redis, g1, ttl_s=30, clock=lambda: now[0]).add([alice])
    now[0] += 10
    await GatewayRoutes(redis, g2, ttl_s=30, clock=lambda: now[0]).add([alice])
    assert 25_000 < await redis.pttl(keys.route(alice)) <= 30_000
    scores = dict(await redis.zrange(keys.route(alice), 0, -1, withscores=True))
    assert scores[str(g2).encode()] - scores[str(g1).encode()] == 10_000


class _Socket:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.writable = True
        self.heard = 0.0

    def write_text(self, payload: bytes) -> bool:
        self.frames.append(payload)
        return True

    def close_now(self, code: int, reason: str) -> None:
        self.frames.append(f"closed {code}".encode())


async def test_a_hub_on_real_pubsub_gets_routed_deliveries_for_its_sockets_and_drops_its_route_at_the_last(
    redis: Any,
) -> None:
    alice, bob = _users(2)
    [gid] = _gateway_ids(1)

    async def groups_of(user_id: str) -> set[str]:
        return set()

    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    hub = Hub(pubsub, groups_of, shards=2, routes=GatewayRoutes(redis, gid))
    await hub.start()
    listener = asyncio.create_task(hub.listen())
    try:
        conns = [
            Connection(alice, "d1", _Socket(), queue_size=10),
            Connection(bob, "d2", _Socket(), queue_size=10),
        ]
        for conn in conns:
            await hub.register(conn)
        assert await redis.zscore(keys.route(alice), str(gid)) is not None
        ids = spread_ids(2, step_ms=1)
        events = [message_sent(m, conversation_id=f"dm:{alice}:{bob}", sender_id=alice) for m in ids]
        await RedisCacheAndPush(redis, 5, roster=_roster()).apply(events)
        want = [message_frame(message_json(e)) for e in events]
        for _ in range(50):
            if all(len(c.socket.frames) == 2 for c in conns):  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.02)
        assert [c.socket.frames for c in conns] == [want, want]  # type: ignore[attr-defined]
        for conn in conns:
            await hub.unregister(conn)

        async def routed() -> list[float | None]:
            return [await redis.zscore(keys.route(u), str(gid)) for u in (alice, bob)]

        # A route goes at the route flusher's next round after its user's last socket: bob's
        # may be a round behind alice's (CI once read it before that round had run).
        for _ in range(50):
            if await routed() == [None, None]:
                break
            await asyncio.sleep(0.02)
        assert await routed() == [None, None]
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await pubsub.aclose()
