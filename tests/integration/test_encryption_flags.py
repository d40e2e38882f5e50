"""The encryption read model on the real Cassandra, as the gateway reads it on every send: a
conversation seen encrypted stays so for the process; "not encrypted" is trusted for the
documented second only; the gateway that wrote the change through knows at once; and, over the
real Redis and Kafka, a chat turned encrypted on one gateway is refused plaintext on another at
once, by the broadcast, not after the longer interval it trusts "not encrypted" for."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from commands import Limits
from commands.adapters.kafka_log import KafkaEventLog
from commands.adapters.redis_idempotency import RedisIdempotencyStore
from commands.adapters.redis_locks import RedisLocks
from events import EncryptionEnabled, Snowflake, Topics, direct_conversation_id
from events.errors import Invalid
from projections.adapters.cql import Cql, connect_to
from projections.adapters.encryption_broadcasts import EncryptionBroadcasts
from projections.adapters.redis_client import make_redis
from projections.encryption import PLAIN_TTL_S, WATCHED_PLAIN_TTL_S, EncryptionFlags
from projections.membership import CassandraMembership
from projections.receipts import CassandraReceipts
from projections.wire import SendFields
from query_api.services import Conversations, Messaging
from tests.polling import until as _until
from tidings.gateway_root import _publisher
from tidings.settings import Settings


@pytest.fixture(scope="module")
def cql(services: Settings) -> Iterator[Cql]:
    cluster, session = connect_to(services)
    yield Cql(session, services.cassandra_keyspace)
    cluster.shutdown()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _enabled(cid: str) -> EncryptionEnabled:
    return EncryptionEnabled(conversation_id=cid, event_id=1, actor_id="a", ts=1)


async def test_other_processes_see_a_direct_chat_encrypted_within_the_plain_ttl(cql: Cql) -> None:
    cid = direct_conversation_id(f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}")
    clock = Clock()
    other = EncryptionFlags(cql, clock=clock)  # another gateway
    other.prepare()
    writer = CassandraMembership(cql)  # the gateway that turns it on, writing through
    writer.prepare()
    assert await other.encrypted(cid) is False
    await writer.apply([_enabled(cid)])
    assert await writer.encrypted(cid) is True  # the writer at once
    assert await other.encrypted(cid) is False  # still trusting its read, within the second
    clock.now += PLAIN_TTL_S + 0.01
    assert await other.encrypted(cid) is True
    assert await other.encrypted_of([cid, "dm:x:y"]) == {cid}
    # A fresh process reads it from the table; applying the event again changes nothing.
    await writer.apply([_enabled(cid)])
    fresh = EncryptionFlags(cql)
    fresh.prepare()
    assert await fresh.encrypted(cid) is True
    rows: list[Any] = await cql.execute(
        "SELECT * FROM {ks}.conversation_encryption WHERE conversation_id = ?", (cid,)
    )
    assert [tuple(r) for r in rows] == [(cid, True)]


async def test_a_gateways_flags_are_read_again_off_the_send_path_in_shared_queries(cql: Cql) -> None:
    """``refresh_ahead`` (the gateway's) on the real table: 150 chats in use past half their
    trusted interval cost no read on their sends' path and two queries between them, and one
    turned encrypted meanwhile (its broadcast missed) is known before its read runs out."""
    run = uuid.uuid4().hex[:8]
    cids = [direct_conversation_id(f"a{run}", f"b{n:03d}{run}") for n in range(150)]
    clock = Clock()
    flags = EncryptionFlags(cql, clock=clock, refresh_ahead=True, gather_s=0.0)
    flags.prepare()
    flags.watch(True)
    writer = CassandraMembership(cql)
    writer.prepare()
    for cid in cids:
        assert await flags.encrypted(cid) is False
    assert flags.reads == 150
    await writer.apply([_enabled(cids[7])])  # another gateway turned it on; no broadcast here
    clock.now += WATCHED_PLAIN_TTL_S / 2 + 0.1
    for cid in cids:
        assert await flags.encrypted(cid) is False  # still trusted: answered from the cache
    assert flags.reads == 150
    await _until(lambda: flags.refreshes == 2 and flags._refresher is None, within=10, what="the refresh")
    assert flags.reads == 152
    clock.now += WATCHED_PLAIN_TTL_S / 2 + 0.1  # past the first reads' interval
    assert await flags.encrypted(cids[7]) is True
    assert [await flags.encrypted(cid) for cid in cids[:3]] == [False] * 3
    assert flags.reads == 152  # trusted on the refresh's reads
    await flags.aclose()


@dataclass
class Gateway:
    """What one gateway process holds for a send and for turning encryption on: its own Redis
    client (broadcasts heard on a pub/sub connection of its own), its flags on a clock the test
    holds still, so only the broadcast can change what it trusts."""

    flags: EncryptionFlags
    broadcasts: EncryptionBroadcasts
    messaging: Messaging
    conversations: Conversations


@asynccontextmanager
async def _gateway(
    services: Settings, cql: Cql, log: KafkaEventLog, worker_id: int
) -> AsyncIterator[Gateway]:
    redis = make_redis(services.redis_host, services.redis_port, services.redis_db)
    flags = EncryptionFlags(cql, clock=Clock())
    membership = CassandraMembership(cql, flags=flags)
    membership.prepare()
    receipts = CassandraReceipts(cql)
    receipts.prepare()
    broadcasts = EncryptionBroadcasts(redis, flags)
    await broadcasts.start()
    ids = Snowflake(worker_id)
    idempotency = RedisIdempotencyStore(redis, 60)
    try:
        yield Gateway(
            flags,
            broadcasts,
            Messaging(
                event_log=log,
                idempotency=idempotency,
                ids=ids,
                limits=Limits(),
                directory=membership,
                watermarks=receipts,
            ),
            Conversations(
                event_log=log,
                directory=membership,
                locks=RedisLocks(redis),
                ids=ids,
                max_members=10,
                publish=_publisher(redis),
            ),
        )
    finally:
        await broadcasts.close()
        await idempotency.aclose()
        await redis.aclose()


async def test_enabling_on_one_gateway_refuses_plaintext_on_another_at_once(
    services: Settings, cql: Cql
) -> None:
    alice, bob = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    cid = direct_conversation_id(alice, bob)
    producer = KafkaEventLog.producer(services.kafka_bootstrap, linger_ms=2)
    await producer.start()
    log = KafkaEventLog(producer, Topics(services.topic_prefix))
    try:
        async with _gateway(services, cql, log, 901) as one, _gateway(services, cql, log, 902) as other:
            await _until(lambda: one.flags.watching and other.flags.watching)
            plain = SendFields(client_msg_id="m1", body="hello")
            await other.messaging.send(alice, "d", cid, plain)  # "not encrypted", now trusted
            await one.conversations.enable_direct_encryption(bob, cid)
            started = time.monotonic()
            while not await other.flags.encrypted(cid):  # no read: its clock stands still
                assert time.monotonic() - started < 5, "the broadcast never arrived"
                await asyncio.sleep(0.005)
            heard_s = time.monotonic() - started
            with pytest.raises(Invalid, match="end-to-end encrypted"):
                await other.messaging.send(alice, "d", cid, SendFields(client_msg_id="m2", body="oops"))
            # Its clock stood still: without the broadcast it would trust its read for good.
            assert other.flags.reads == 1, other.flags.reads
            assert heard_s < 2.0, heard_s
    finally:
        await producer.stop()


async def test_a_gateway_whose_broadcast_connection_is_killed_forgets_its_reads(
    services: Settings, cql: Cql
) -> None:
    """Its pub/sub connection killed by Redis (CLIENT KILL of that one connection): redis-py
    reconnects and subscribes again; what was broadcast meanwhile is lost, so the cached "not
    encrypted" is forgotten and read again, and the flags watch again once Redis confirms."""
    cid = direct_conversation_id(f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}")
    producer = KafkaEventLog.producer(services.kafka_bootstrap, linger_ms=2)
    await producer.start()
    log = KafkaEventLog(producer, Topics(services.topic_prefix))
    admin = make_redis(services.redis_host, services.redis_port, services.redis_db)
    try:
        async with _gateway(services, cql, log, 903) as gateway:
            flags = gateway.flags
            await _until(lambda: flags.watching)
            assert await flags.encrypted(cid) is False
            assert await flags.encrypted(cid) is False
            assert flags.reads == 1
            assert await admin.client_kill_filter(addr=gateway.broadcasts.local_address()) == 1
            deadline = time.monotonic() + 10
            while flags.reads < 2:  # the clock stands still: only forgetting makes it read
                assert time.monotonic() < deadline, "the cached read was never forgotten"
                assert await flags.encrypted(cid) is False
                await asyncio.sleep(0.01)
            await _until(lambda: flags.watching)
    finally:
        await admin.aclose()
        await producer.stop()
