"""A send's rate-limit check and idempotency claim on the real Redis and on a real Redis
Cluster, through one pipeliner as the gateway wires them (``tidings.gateway_root``): both go
out in one flush (one round trip), the bucket's answer wins, and a refused send's claim is
withdrawn. On the cluster the two keys are in different slots: one pipeline, not one script."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import RedisCluster as AsyncRedisCluster

from commands import Limits, SendMessage, SendRecord, send_message
from commands.adapters.redis_idempotency import RedisIdempotencyStore
from commands.adapters.redis_rate_limits import TOKEN_BUCKET, RedisRateLimiter
from commands.memory import MemoryDirectory, MemoryEventLog
from events import keys
from events.errors import Conflict, RateLimited
from events.ids import Snowflake
from projections.adapters.redis_client import make_redis, redis_from
from projections.adapters.redis_pipeliner import RedisPipeliner
from tidings.settings import Settings


@pytest.fixture(params=["redis", "cluster"])
async def client(request: pytest.FixtureRequest, services: Settings) -> AsyncIterator[Any]:
    if request.param == "redis":
        c: Any = make_redis(services.redis_host, services.redis_port, services.redis_db)
    else:
        cluster: Settings = request.getfixturevalue("redis_cluster")
        c = redis_from(cluster.redis_cluster, "", 0, 0)
        assert isinstance(c, AsyncRedisCluster)
    yield c
    await c.aclose()


class _Counted(RedisPipeliner):
    """The gateway's pipeliner, counting its flushes and the commands in each."""

    def __init__(self, redis: Any) -> None:
        super().__init__(redis)
        self.flushes: list[list[bytes]] = []

    def _flush(self) -> None:
        if self._pending:
            self.flushes.append([str(args[0]).encode() for args, _, _ in self._pending])
        super()._flush()


@pytest.fixture
async def ports(client: Any) -> AsyncIterator[dict[str, Any]]:
    pipeliner = _Counted(client)
    idempotency = RedisIdempotencyStore(client, ttl_s=60, pipeliner=pipeliner)
    yield {
        "log": MemoryEventLog(),
        "idempotency": idempotency,
        "ids": Snowflake(1),
        "limits": Limits(max_body_chars=10),
        "directory": MemoryDirectory(),
        # a burst of 2, then one token every 100 s
        "limiter": RedisRateLimiter(client, {"send": (0.01, 2)}, pipeliner=pipeliner),
    }
    await pipeliner.aclose()


def _cmd(sender: str, client_msg_id: str, body: str = "hi") -> SendMessage:
    return SendMessage(
        sender_id=sender,
        device_id="phone",
        conversation_id=f"dm:{sender}:zed",
        client_msg_id=client_msg_id,
        body=body,
    )


async def test_a_send_costs_one_round_trip_of_check_and_claim(client: Any, ports: dict[str, Any]) -> None:
    sender = f"u{uuid.uuid4().hex[:10]}"
    if isinstance(client, AsyncRedisCluster):
        # the case a single script could not serve without renaming the keys
        bucket, claim = keys.rate_limit("send", sender), keys.idempotency(sender, "c-1")
        assert client.keyslot(bucket) != client.keyslot(claim)
    # Loaded already, as on a running system (a script Redis lost is loaded again by the
    # first call that meets NOSCRIPT, which then runs it alone once: another round trip).
    await client.script_load(TOKEN_BUCKET)
    flushes: list[list[bytes]] = ports["limiter"]._script._pipeliner.flushes
    result = await send_message(_cmd(sender, "c-1"), **ports)
    assert flushes[0] == [b"EVALSHA", b"SET"]  # the bucket, then the claim, in one pipeline
    assert [e.message_id for e in ports["log"].events] == [result.message_id]
    again = await send_message(_cmd(sender, "c-1"), **ports)  # the recorded ack
    assert again.message_id == result.message_id and len(ports["log"].events) == 1
    # The second send too; its flush may start with the first send's mark (SET ... XX).
    sends = [f for f in flushes if b"EVALSHA" in f]
    assert len(sends) == 2 and all(f[-2:] == [b"EVALSHA", b"SET"] for f in sends), flushes


async def test_over_the_limit_the_bucket_wins_and_a_new_claim_is_withdrawn(
    client: Any, ports: dict[str, Any]
) -> None:
    sender = f"u{uuid.uuid4().hex[:10]}"
    first = await send_message(_cmd(sender, "c-1"), **ports)
    await send_message(_cmd(sender, "c-2"), **ports)  # the burst's last token
    with pytest.raises(RateLimited) as refused:
        await send_message(_cmd(sender, "c-3"), **ports)
    assert refused.value.retry_after == 100
    assert await client.get(keys.idempotency(sender, "c-3")) is None  # withdrawn
    # A duplicate over the limit is refused too (not answered with its ack), and its record
    # stays; so is a conflicting one (not 409).
    with pytest.raises(RateLimited):
        await send_message(_cmd(sender, "c-1"), **ports)
    with pytest.raises(RateLimited):
        await send_message(_cmd(sender, "c-1", body="other"), **ports)
    store: RedisIdempotencyStore = ports["idempotency"]
    assert await store.claim(sender, "c-1", SendRecord(first.event, False)) == SendRecord(first.event, True)
    assert len(ports["log"].events) == 2
    await client.delete(*(keys.idempotency(sender, c) for c in ("c-1", "c-2")))


async def test_under_the_limit_a_conflict_is_a_conflict(client: Any, ports: dict[str, Any]) -> None:
    sender = f"u{uuid.uuid4().hex[:10]}"
    await send_message(_cmd(sender, "c-1"), **ports)
    with pytest.raises(Conflict):
        await send_message(_cmd(sender, "c-1", body="other"), **ports)
    await client.delete(keys.idempotency(sender, "c-1"))


async def test_a_claim_stored_before_the_merge_is_honoured(client: Any, ports: dict[str, Any]) -> None:
    """A client retrying across the deploy: the claim an older gateway stored (same key, the
    event as an older gateway wrote it) answers the retry with its recorded ack."""
    import orjson

    sender = f"u{uuid.uuid4().hex[:10]}"
    event = _recorded(sender)
    await client.set(
        keys.idempotency(sender, "c-1"), orjson.dumps({"event": event.model_dump(), "appended": True}), ex=60
    )
    result = await send_message(_cmd(sender, "c-1"), **ports)
    assert (result.message_id, result.ts) == (event.message_id, event.ts)
    assert ports["log"].events == []
    await client.delete(keys.idempotency(sender, "c-1"))


def _recorded(sender: str) -> Any:
    from commands.model import decide_send
    from events import snowflake_ts

    message_id = Snowflake(2).next_id()
    limits = Limits(max_body_chars=10)
    return decide_send(_cmd(sender, "c-1"), message_id=message_id, ts=snowflake_ts(message_id), limits=limits)
