"""``RedisPresence`` on the real Redis: the presence store's contract (aggregation over devices,
lapses, reaping, which calls are transitions; ``tests/contracts.py``, also run on
``MemoryPresence``), and what only the script's calls and key expiries can get wrong. Each test
uses fresh user ids; the TTL is short so lapses happen."""

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
from tests.contracts import PRESENCE_TTL_MS, PresenceStoreContract
from tidings.settings import Settings

TTL_MS = PRESENCE_TTL_MS


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
    store = RedisPresence(client, ttl_ms=TTL_MS)
    yield store
    await store.aclose()
    await client.aclose()


def _user() -> str:
    return f"p{uuid.uuid4().hex[:10]}"


def _states(changes: Any) -> list[str]:
    return [c.state for c in changes]


class RealClock:
    """Redis's clock is the machine's: time passes by sleeping."""

    @staticmethod
    def now_ms() -> float:
        return time.time() * 1000

    @staticmethod
    async def advance(seconds: float) -> None:
        await asyncio.sleep(seconds)


class TestRedisPresence(PresenceStoreContract):
    @pytest.fixture
    def clock(self) -> RealClock:
        return RealClock()

    @pytest.fixture
    def presence(self, store: RedisPresence) -> RedisPresence:
        return store


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
        await store.aclose()
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
