"""The real adapters against the real Redis and Cassandra, through the same contracts as the fakes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import pytest

from commands.adapters.redis_idempotency import RedisIdempotencyStore
from commands.adapters.redis_locks import RedisLocks
from commands.adapters.redis_rate_limits import RedisRateLimiter
from events import keys
from events.errors import Unavailable
from projections.adapters.cql import Cql, connect_to
from projections.adapters.recent import RedisCacheAndPush
from projections.adapters.redis_client import make_redis
from projections.keys import CassandraKeys
from projections.membership import CassandraMembership
from projections.messages import CassandraMessages
from projections.receipts import CassandraReceipts
from projections.roster import Entry, Roster
from tests.contracts import (
    DAY_MS,
    DirectoryContract,
    IdempotencyContract,
    KeyStoreContract,
    LocksContract,
    MessageStoreContract,
    RateLimiterContract,
    ReceiptStoreContract,
    RecentContract,
    SyncLogContract,
    spread_ids,
)
from tests.factories import message_sent
from tidings.settings import Settings


@pytest.fixture(scope="module")
def session(services: Settings) -> Iterator[Any]:
    cluster, session = connect_to(services)
    yield session
    cluster.shutdown()


def _direct_only() -> Roster:
    async def load(cid: str, threshold: int) -> Entry:
        raise AssertionError("direct chats need no lookup")

    return Roster(load, threshold=500)


class TestCassandraKeys(KeyStoreContract):
    """The claims' conditional writes (lightweight transactions) on the real Cassandra."""

    @pytest.fixture
    def keys(self, session: Any, services: Settings) -> CassandraKeys:
        store = CassandraKeys(Cql(session, services.cassandra_keyspace))
        store.prepare()
        return store


class TestCassandraDirectory(DirectoryContract):
    """The gateway's view of the membership read model (no roster), with its write times."""

    @pytest.fixture
    def directory(self, session: Any, services: Settings) -> CassandraMembership:
        store = CassandraMembership(Cql(session, services.cassandra_keyspace))
        store.prepare()
        return store


class _TakeRepliesLost:
    """A Redis client whose ``SET`` is applied twice, the first reply lost: what redis-py's
    retry does when the connection under a command closes after Redis applied it."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        await self._redis.set(*args, **kwargs)
        return await self._redis.set(*args, **kwargs)


async def a_retried_take_holds_the_lock(redis: Any) -> None:
    """A holder whose ``SET NX`` was retried finds its own token: it holds the lock at once
    (not after waiting out its own lease), and releases it."""
    name = f"l{uuid.uuid4().hex[:10]}"
    async with asyncio.timeout(2), RedisLocks(cast(Any, _TakeRepliesLost(redis)), wait_s=0.5).hold(name):
        with pytest.raises(Unavailable):  # really held meanwhile
            async with RedisLocks(redis, wait_s=0.05).hold(name):
                pass
    async with asyncio.timeout(2), RedisLocks(redis, wait_s=0.5).hold(name):
        pass


class TestRedisLocks(LocksContract):
    @pytest.fixture
    def locks(self, redis: Any) -> RedisLocks:
        return RedisLocks(redis)

    async def test_a_take_retried_after_its_reply_was_lost_holds_the_lock(self, redis: Any) -> None:
        await a_retried_take_holds_the_lock(redis)


class TestRedisRateLimiter(RateLimiterContract):
    @pytest.fixture
    def limiter(self, redis: Any) -> Any:
        return lambda limits: RedisRateLimiter(redis, limits)


class TestCassandraMessages(MessageStoreContract):
    @pytest.fixture
    def store(self, session: Any, services: Settings) -> CassandraMessages:
        store = CassandraMessages(Cql(session, services.cassandra_keyspace), bucket_ms=DAY_MS)
        store.prepare()
        return store


class TestRedisCacheAndPush(RecentContract):
    @pytest.fixture
    def recent(self, redis: Any) -> RedisCacheAndPush:
        return RedisCacheAndPush(redis, size=5, roster=None)

    async def test_pushes_frames_to_both_members_after_caching(self, redis: Any) -> None:
        [mid] = spread_ids(1, step_ms=1)
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(keys.user_channel("alice"), keys.user_channel("bob"))
        await RedisCacheAndPush(redis, size=5, roster=_direct_only()).apply(
            [message_sent(mid, conversation_id="dm:alice:bob")]
        )
        got = []
        for _ in range(20):
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if msg:
                got.append(msg["channel"])
            if len(got) == 2:
                break
        await pubsub.aclose()
        assert sorted(got) == [b"deliver:user:alice", b"deliver:user:bob"]

    async def test_rebuild_mode_does_not_push(self, redis: Any) -> None:
        [mid] = spread_ids(1, step_ms=1)
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(keys.user_channel("carol"))
        await RedisCacheAndPush(redis, size=5, roster=None).apply(
            [message_sent(mid, conversation_id="dm:carol:dave")]
        )
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        await pubsub.aclose()
        assert msg is None


async def test_recent_reloads_its_script_after_redis_lost_it(redis: Any) -> None:

    recent = RedisCacheAndPush(redis, 5, roster=None)
    cid = f"dm:alice:u{uuid.uuid4().hex[:12]}"
    ids = spread_ids(3, step_ms=1)
    await recent.apply([message_sent(ids[0], conversation_id=cid)])
    recent._sha = "0" * 40  # what a restarted Redis (no scripts) looks like to the cache
    with pytest.raises(Unavailable):
        await recent.apply([message_sent(ids[1], conversation_id=cid)])
    await recent.apply(
        [message_sent(ids[1], conversation_id=cid), message_sent(ids[2], conversation_id=cid)]
    )  # the projector's retry
    assert [int(m["message_id"]) for m in await recent.all(cid)] == ids


async def _pushes(pubsub: Any, count: int) -> list[tuple[bytes, bytes]]:
    got: list[tuple[bytes, bytes]] = []
    for _ in range(40):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.25)
        if msg:
            got.append((msg["channel"], msg["data"]))
        if len(got) == count:
            break
    return got


async def test_a_routed_batch_goes_on_the_pipeliners_connection_in_log_order(
    redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One Redis: the deliver stage's script calls go through its pipeliner, not a redis-py
    pipeline per batch, each message cached and pushed in log order."""
    users = sorted(f"u{uuid.uuid4().hex[:12]}" for _ in range(3))  # a direct id's users in order
    a, b = f"dm:{users[0]}:{users[1]}", f"dm:{users[0]}:{users[2]}"
    ids = spread_ids(4, step_ms=1)
    events = [message_sent(mid, conversation_id=cid) for mid, cid in zip(ids, (a, b, a, b), strict=True)]
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(*(keys.user_channel(u) for u in users))

    def no_pipeline(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the routed deliver stage runs no redis-py pipeline")

    recent = RedisCacheAndPush(redis, 5, roster=_direct_only())
    await recent.apply(events[:1])  # loads the script (a plain command, not a pipeline)
    monkeypatch.setattr(redis, "pipeline", no_pipeline)
    await recent.apply(events[1:])
    got = await _pushes(pubsub, 8)
    await pubsub.aclose()
    assert [int(m["message_id"]) for m in await recent.all(a)] == [ids[0], ids[2]]
    assert [int(m["message_id"]) for m in await recent.all(b)] == [ids[1], ids[3]]
    # each message to both members of its conversation (no routes: on the users' channels),
    # the messages in the order of the log
    pushed = [int(data.split(b'"message_id":"')[1].split(b'"')[0]) for _, data in got]
    assert pushed == [ids[0], ids[0], ids[1], ids[1], ids[2], ids[2], ids[3], ids[3]]


async def test_an_error_reply_fails_the_routed_batch_after_every_call_ran(redis: Any) -> None:
    """As a pipeline without MULTI: each call runs; the first error is raised (the projector
    then retries the whole batch, whose writes are idempotent)."""
    good, bad = f"dm:alice:u{uuid.uuid4().hex[:12]}", f"dm:alice:u{uuid.uuid4().hex[:12]}"  # "a" < "u"
    await redis.set(keys.recent(bad), b"not a sorted set")  # the script's ZADD: WRONGTYPE
    ids = spread_ids(3, step_ms=1)
    recent = RedisCacheAndPush(redis, 5, roster=_direct_only())
    with pytest.raises(Unavailable):
        await recent.apply(
            [
                message_sent(ids[0], conversation_id=good),
                message_sent(ids[1], conversation_id=bad),
                message_sent(ids[2], conversation_id=good),
            ]
        )
    assert [int(m["message_id"]) for m in await recent.all(good)] == [ids[0], ids[2]]


class TestRedisIdempotency(IdempotencyContract):
    @pytest.fixture
    async def idem(self, redis: Any) -> AsyncIterator[RedisIdempotencyStore]:
        store = RedisIdempotencyStore(redis, ttl_s=60)
        yield store
        await store.aclose()  # its marks out before the client closes

    async def test_records_expire(self, redis: Any) -> None:
        store = RedisIdempotencyStore(redis, ttl_s=1)
        from commands import SendRecord

        record = SendRecord(message_sent(1, conversation_id="dm:a:b"), False)
        assert await store.claim("expiring", "c", record) is None
        await asyncio.sleep(1.2)
        assert await store.claim("expiring", "c", record) is None
        await redis.delete(keys.idempotency("expiring", "c"))
        await store.aclose()

    async def test_the_mark_is_not_waited_for_and_a_later_claim_sees_it(self, redis: Any) -> None:
        """One Redis round trip of idempotency on a send's path: the mark returns without
        waiting for Redis; once stored, a claim sees it."""
        from commands import SendRecord

        store = RedisIdempotencyStore(redis, ttl_s=60)
        sender = f"u{uuid.uuid4().hex[:10]}"
        record = SendRecord(message_sent(1, conversation_id="dm:a:b"), False)
        assert await store.claim(sender, "c", record) is None
        key = keys.idempotency(sender, "c")
        marking = store.mark_appended(sender, "c", SendRecord(record.event, True))
        with pytest.raises(StopIteration):  # done at its first step: it never waited
            marking.send(None)
        for _ in range(200):
            if b'"appended":true' in await redis.get(key):
                break
            await asyncio.sleep(0.01)
        assert await store.claim(sender, "c", record) == SendRecord(record.event, True)
        # What an older gateway wrote (the event as a dict dumped by orjson) still reads.
        import orjson

        await redis.set(key, orjson.dumps({"event": record.event.model_dump(), "appended": True}))
        assert await store.claim(sender, "c", record) == SendRecord(record.event, True)
        await redis.delete(key)
        await store.aclose()

    async def test_closing_sends_a_waiting_mark_and_nothing_connects_after(self, services: Settings) -> None:
        """A mark waits up to ``MARK_DELAY_S`` for company. Closing the store sends it at once;
        nothing the store does afterwards opens a connection of the client's pool (which the
        client's ``aclose`` would not close: it leaked a socket per gateway stop and, in the
        suite, a warning on whichever test the garbage collector next ran in)."""
        from commands import SendRecord
        from commands.adapters.redis_idempotency import MARK_DELAY_S

        client = make_redis(services.redis_host, services.redis_port, services.redis_db)
        store = RedisIdempotencyStore(client, ttl_s=60)
        sender = f"u{uuid.uuid4().hex[:10]}"
        key = keys.idempotency(sender, "c")
        record = SendRecord(message_sent(1, conversation_id="dm:a:b"), False)
        try:
            assert await store.claim(sender, "c", record) is None
            await store.mark_appended(sender, "c", SendRecord(record.event, True))
            await store.aclose()  # well within the mark's delay
            stored = await client.get(key)
            assert stored is not None and b'"appended":true' in stored
            with pytest.raises(Unavailable):  # refused, not sent on a new connection
                await store.claim(sender, "d", record)
            await client.delete(key)
        finally:
            await client.aclose()
        await asyncio.sleep(MARK_DELAY_S * 3)  # the mark's timer, had it been left armed
        pool = client.connection_pool  # redis-py 8.1's pool lists (pinned in pyproject.toml)
        assert not [c for c in (*pool._available_connections, *pool._in_use_connections) if c.is_connected]


def test_migrations_rerun_changes_nothing(session: Any, services: Settings) -> None:
    from projections.adapters.migrate import migrate_cassandra

    assert (
        migrate_cassandra(
            session,
            services.cassandra_keyspace,
            replication=services.cassandra_replication_map(),
            echo=lambda _: None,
        )
        == []
    )


@pytest.fixture(scope="module")
def sync_log_keyspace(session: Any, services: Settings) -> Iterator[Any]:
    """The sync log in a keyspace of its own: its writes move partition watermarks, which
    would make the e2e system's syncs (same services, same test keyspace) skip offsets."""
    from projections.adapters.migrate import migrate_cassandra
    from projections.sync_log import CassandraSyncLog

    keyspace = f"{services.cassandra_keyspace}_synclog"
    session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
    migrate_cassandra(
        session, keyspace, replication=services.cassandra_replication_map(), echo=lambda _: None
    )
    log = CassandraSyncLog(Cql(session, keyspace))
    log.prepare()
    yield log
    session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)


async def test_rate_limits_hold_under_concurrent_checks_and_survive_a_script_flush(redis: Any) -> None:
    from commands.adapters.redis_rate_limits import RedisRateLimiter
    from events.errors import RateLimited

    limiter = RedisRateLimiter(redis, {"send": (0.5, 5)})
    user = f"rl{uuid.uuid4().hex[:8]}"

    async def check() -> bool:
        try:
            await limiter.check("send", user)
        except RateLimited as exc:
            # counted, not expected: the burst's checks pass
            assert exc.retry_after is not None and exc.retry_after >= 1  # noqa: PT017
            return False
        return True

    # Concurrent checks share pipelines; the bucket still gives exactly its burst.
    assert sum(await asyncio.gather(*(check() for _ in range(20)))) == 5
    # Redis forgot its scripts (a restart): the limiter loads it again and still counts.
    await redis.script_flush()
    user = f"rl{uuid.uuid4().hex[:8]}"  # a fresh bucket
    assert [await check() for _ in range(6)] == [True] * 5 + [False]


class TestCassandraSyncLog(SyncLogContract):
    @pytest.fixture
    def sync_log(self, sync_log_keyspace: Any) -> Any:
        return sync_log_keyspace


class TestCassandraReceipts(ReceiptStoreContract):
    @pytest.fixture
    def receipts(self, session: Any, services: Settings) -> CassandraReceipts:
        store = CassandraReceipts(Cql(session, services.cassandra_keyspace))
        store.prepare()
        return store
