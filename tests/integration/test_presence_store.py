"""``RedisPresence`` on the real Redis: aggregation over devices, lapses, reaping, and which
calls are transitions. Each test uses fresh user ids; the TTL is short so lapses happen."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from commands.adapters.redis_presence import CHUNK, RedisPresence
from commands.presence import Beat
from projections.adapters.redis_client import make_redis
from tidings.settings import Settings

# Short, so lapses happen in the test; long enough that a loaded machine's stall between a
# heartbeat and the next call does not lapse it too.
TTL_MS = 1000


@pytest.fixture(scope="module")
def presence_db(services: Settings) -> int:
    """A database of its own (the e2e system's gateways reap the test database's lapsed
    users), emptied first: a reap takes the longest-lapsed users first, so lapsed users left
    there by someone else would come before these tests' own."""
    import redis

    db = (services.redis_db + 8) % 16
    with redis.Redis(host=services.redis_host, port=services.redis_port, db=db) as client:
        client.flushdb()
    return db


@pytest.fixture
async def store(services: Settings, presence_db: int) -> AsyncIterator[RedisPresence]:
    client = make_redis(services.redis_host, services.redis_port, presence_db)
    yield RedisPresence(client, ttl_ms=TTL_MS)
    await client.aclose()


def _user() -> str:
    return f"p{uuid.uuid4().hex[:10]}"


def _states(changes: Any) -> list[str]:
    return [c.state for c in changes]


async def test_first_connection_is_a_transition_and_heartbeats_are_not(store: RedisPresence) -> None:
    alice = _user()
    assert _states(await store.set([Beat(alice, "c1", "online", 0)])) == ["online"]
    for _ in range(3):
        assert await store.set([Beat(alice, "c1", "online", 0)]) == []
    assert _states(await store.set([Beat(alice, "c2", "online", 0)])) == []  # a second device
    (view,) = await store.read([alice])
    assert (view.state, view.last_seen) == ("online", None)


async def test_away_only_when_every_live_connection_is_away(store: RedisPresence) -> None:
    alice = _user()
    await store.set([Beat(alice, "phone", "online", 0), Beat(alice, "laptop", "online", 0)])
    assert await store.set([Beat(alice, "phone", "away", 0)]) == []
    assert _states(await store.set([Beat(alice, "laptop", "away", 0)])) == ["away"]
    assert _states(await store.set([Beat(alice, "phone", "online", 0)])) == ["online"]
    assert await store.leave(alice, "laptop") is None
    gone = await store.leave(alice, "phone")
    assert gone is not None and gone.state == "offline"
    assert gone.last_seen is not None and abs(gone.last_seen - time.time() * 1000) < 2000
    assert await store.leave(alice, "phone") is None  # leaving twice is nothing


async def test_a_lapsed_user_reads_offline_at_once_and_is_reaped_once(store: RedisPresence) -> None:
    alice, bob = _user(), _user()
    await store.set([Beat(alice, "c1", "online", 0), Beat(bob, "c1", "online", 0)])
    heard = time.time() * 1000
    await asyncio.sleep(TTL_MS / 1000 + 0.2)
    await store.set([Beat(bob, "c1", "online", 0)])  # bob heartbeats, alice is silent
    (view,) = await store.read([alice])
    assert view.state == "offline" and view.last_seen is not None
    assert abs(view.last_seen - heard) < 300  # last_seen is the last heartbeat, not the reap
    reaped = [c for c in await store.reap(10_000) if c.user_id in (alice, bob)]
    assert [(c.user_id, c.state, c.last_seen) for c in reaped] == [(alice, "offline", view.last_seen)]
    await store.set([Beat(bob, "c1", "online", 0)])
    assert [c for c in await store.reap(10_000) if c.user_id in (alice, bob)] == []
    (bob_view,) = await store.read([bob])
    assert bob_view.state == "online"


async def test_idle_time_counts_back_from_the_last_heartbeat(store: RedisPresence) -> None:
    alice = _user()
    # reported late: heard TTL+100 ms ago, so already lapsed
    assert await store.set([Beat(alice, "c1", "online", TTL_MS + 100)]) == []
    (view,) = await store.read([alice])
    assert view.state == "offline"


async def test_transitions_carry_increasing_times(store: RedisPresence) -> None:
    alice = _user()
    (on,) = await store.set([Beat(alice, "c1", "online", 0)])
    (away,) = await store.set([Beat(alice, "c1", "away", 0)])
    off = await store.leave(alice, "c1")
    assert off is not None and on.at < away.at < off.at


async def test_a_heartbeat_reported_after_the_close_does_not_bring_the_socket_back(
    store: RedisPresence,
) -> None:
    # A sweep collects a socket's heartbeat, the socket closes, then the sweep's report lands.
    alice = _user()
    await store.set([Beat(alice, "c1", "online", 0)])
    gone = await store.leave(alice, "c1")
    assert gone is not None and gone.state == "offline"
    assert await store.set([Beat(alice, "c1", "online", 0)]) == []
    (view,) = await store.read([alice])
    assert view.state == "offline"
    # a new socket of the same user is another connection: online again
    assert _states(await store.set([Beat(alice, "c2", "online", 0)])) == ["online"]


async def test_a_user_who_keeps_heartbeating_stays_online_past_the_first_ttl(
    services: Settings, presence_db: int
) -> None:
    # The sets holding a user's connections must live as long as the newest connection in them,
    # not as long as the one that made the user online: heartbeats at 0, 1, 2 and 3 s keep the
    # socket until 5 s, so at 4.5 s the user is online (a set that kept the expiry of the first
    # transition, 0 + TTL + 1 s = 3 s, was gone by then and read offline).
    ttl_ms = 2000
    client = make_redis(services.redis_host, services.redis_port, presence_db)
    store = RedisPresence(client, ttl_ms=ttl_ms)
    try:
        alice = _user()
        started = time.monotonic()
        assert _states(await store.set([Beat(alice, "c1", "online", 0)])) == ["online"]
        for beat in (1, 2, 3):
            await asyncio.sleep(max(0.0, started + beat - time.monotonic()))
            assert await store.set([Beat(alice, "c1", "online", 0)]) == []
        await asyncio.sleep(max(0.0, started + 4.5 - time.monotonic()))
        (view,) = await store.read([alice])
        assert view.state == "online"
        assert [c for c in await store.reap(10_000) if c.user_id == alice] == []
    finally:
        await client.aclose()


async def test_one_call_reports_many_users_and_only_their_transitions(store: RedisPresence) -> None:
    users = [_user() for _ in range(2 * CHUNK + CHUNK // 2)]  # over two script calls' worth
    first = await store.set([Beat(u, "c1", "online", 0) for u in users])
    assert [(c.user_id, c.state) for c in first] == [(u, "online") for u in users]
    again = [Beat(u, "c1", "online", 0) for u in users]
    late = 2 * CHUNK + 1  # in the third call
    again[7] = Beat(users[7], "c1", "away", 0)
    again[late] = Beat(users[late], "c1", "away", 0)
    assert [(c.user_id, c.state) for c in await store.set(again)] == [
        (users[7], "away"),
        (users[late], "away"),
    ]
    views = await store.read(users[:3] + users[late - 1 : late + 1])
    assert [v.state for v in views] == ["online", "online", "online", "online", "away"]
    # the same user twice in one report: both transitions, in order, at increasing times
    bob = _user()
    both = await store.set([Beat(bob, "c1", "online", 0), Beat(bob, "c1", "away", 0)])
    assert [c.state for c in both] == ["online", "away"] and both[0].at < both[1].at
