"""The cluster profile replicates: every partition of the namespace's topics has 3 replicas, all
in sync, and ``min.insync.replicas`` 2; the keyspace has replication 3 and the application reads
and writes at LOCAL_QUORUM; HAProxy spreads users over both gateways and keeps each user on one;
and a message acknowledged through HAProxy is still readable, from Kafka and from Cassandra,
after ``kill -9`` of one broker and one Cassandra node, while new sends are still acknowledged.

The kills come last (the module's tests run in order); the fixture brings the cluster back or
stops it afterwards.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT

from events import Topics, direct_conversation_id
from projections.adapters.cql import connect_to
from projections.messages import bucket_of
from tests.cluster.conftest import ClusterSystem
from tests.e2e.conftest import Client, user
from tidings.migrate import topic_config
from tidings.services import _process
from tidings.services import cluster as profile
from tidings.services.haproxy import HAProxy
from tidings.settings import Settings


async def test_topics_have_three_replicas_in_sync_and_min_isr_two(cluster_system: ClusterSystem) -> None:
    settings = cluster_system.settings
    topics = list(Topics(settings.topic_prefix).all())
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
        insync = await topic_config(admin, topics, "min.insync.replicas")
    finally:
        await admin.close()
    assert {t["topic"] for t in described} == set(topics)
    for topic in described:
        assert topic["error_code"] == 0 and len(topic["partitions"]) == settings.topic_partitions, topic
        for partition in topic["partitions"]:
            assert sorted(partition["replicas"]) == [1, 2, 3], (topic["topic"], partition)
            assert sorted(partition["isr"]) == [1, 2, 3], (topic["topic"], partition)
    assert insync == dict.fromkeys(topics, "2")


def test_keyspace_has_replication_three_and_the_session_quorum(cluster_system: ClusterSystem) -> None:
    settings = cluster_system.settings
    cluster, session = connect_to(settings)
    try:
        row = session.execute(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
            (settings.cassandra_keyspace,),
        ).one()
        hosts = {host.address: host.is_up for host in cluster.metadata.all_hosts()}
        level = cluster.profile_manager.profiles[EXEC_PROFILE_DEFAULT].consistency_level
    finally:
        cluster.shutdown()
    assert row is not None
    assert dict(row.replication) == {
        "class": "org.apache.cassandra.locator.NetworkTopologyStrategy",
        settings.cassandra_local_dc: "3",
    }
    assert hosts == dict.fromkeys(profile.CASSANDRA_HOSTS, True)
    assert level == ConsistencyLevel.LOCAL_QUORUM


def _ws_sessions(haproxy: HAProxy) -> dict[str, int]:
    """Current sessions per gateway of the WebSocket backend (HAProxy's ``show stat``)."""
    text = haproxy.admin("show stat").lstrip("# ")
    rows = csv.DictReader(io.StringIO(text))
    return {
        r["svname"]: int(r["scur"])
        for r in rows
        if r["pxname"] == "gateways_ws" and r["svname"].startswith("gw")
    }


def _haproxy(settings: Settings) -> HAProxy:
    return HAProxy(settings, profile.gateway_ports(2))


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> float:
    """Seconds until ``check`` holds; fails after ``timeout_s``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def _gateway_of(
    system: ClusterSystem, stack: AsyncExitStack, name: str, device: str
) -> tuple[Client, str]:
    """A socket for ``name`` through HAProxy, and the gateway HAProxy gave it."""
    haproxy = _haproxy(system.settings)
    before = _ws_sessions(haproxy)
    client = await stack.enter_async_context(system.connect(name, device))
    await client.settled()
    after = _ws_sessions(haproxy)
    grown = [gw for gw in after if after[gw] > before.get(gw, 0)]
    assert len(grown) == 1, (before, after)
    return client, grown[0]


async def test_haproxy_spreads_users_over_both_gateways_and_keeps_each_user_on_one(
    cluster_system: ClusterSystem,
) -> None:
    async with AsyncExitStack() as stack:
        placed: dict[str, str] = {}
        while len(set(placed.values())) < 2:
            assert len(placed) < 16, f"16 users all hashed to one gateway: {placed}"
            name = user()
            _, placed[name] = await _gateway_of(cluster_system, stack, name, "phone")
        # Every user's second device lands where the first one did (consistent hash by user).
        for name, gateway in placed.items():
            _, again = await _gateway_of(cluster_system, stack, name, "laptop")
            assert again == gateway, (name, gateway, again)


async def _two_gateways_apart(
    system: ClusterSystem, stack: AsyncExitStack
) -> tuple[str, Client, str, Client]:
    """Sender and recipient on different gateways, so a delivery crosses between them."""
    alice = user()
    alice_socket, alice_gateway = await _gateway_of(system, stack, alice, "phone")
    for _ in range(16):
        bob = user()
        async with AsyncExitStack() as probe:
            _, bob_gateway = await _gateway_of(system, probe, bob, "phone")
        if bob_gateway != alice_gateway:
            bob_socket, again = await _gateway_of(system, stack, bob, "phone")
            assert again == bob_gateway
            return alice, alice_socket, bob, bob_socket
    raise AssertionError("16 users all on the sender's gateway")


def _kill_9(service: Any) -> int:
    pid = _process.owned_pid(service.pid_file, service.dir)
    assert pid is not None, f"{service.name} is not running from our pid file"
    os.kill(pid, signal.SIGKILL)
    return pid


async def _in_kafka(settings: Settings, cid: str, needle: bytes) -> bool:
    """Whether the record holding ``needle`` is in ``cid``'s partition, read from the brokers
    still alive (the partition's current leader)."""
    topic = Topics(settings.topic_prefix).conversation_events
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while True:
            batches = await consumer.getmany(timeout_ms=2000)
            for records in batches.values():
                if any(r.key == cid.encode() and needle in (r.value or b"") for r in records):
                    return True
            positions = [await consumer.position(tp) for tp in tps]
            if not batches or all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                return False
    except Exception:  # noqa: BLE001 - a leader not yet re-elected: the caller asks again
        return False
    finally:
        await consumer.stop()


def _in_cassandra(settings: Settings, cid: str, message_id: int) -> bool:
    """Whether the message row is read at LOCAL_QUORUM (2 of the 3 replicas answer)."""
    cluster, session = connect_to(settings)
    try:
        bucket = bucket_of(message_id, settings.message_bucket_ms)
        row = session.execute(
            f"SELECT body FROM {settings.cassandra_keyspace}.messages "
            "WHERE conversation_id = %s AND bucket = %s AND message_id = %s",
            (cid, bucket, message_id),
            timeout=15,
        ).one()
        return row is not None
    except Exception:  # noqa: BLE001 - the dead node not yet marked down: the caller asks again
        return False
    finally:
        cluster.shutdown()


async def _history(system: ClusterSystem, reader: str, cid: str) -> list[str]:
    status, page = await asyncio.to_thread(
        system.request, "GET", f"/v1/conversations/{cid}/messages?limit=100", user=reader
    )
    return [m["body"] for m in page["messages"]] if status == 200 else []


async def test_acked_message_survives_kill_9_of_a_broker_and_a_cassandra_node(
    cluster_system: ClusterSystem,
) -> None:
    settings = cluster_system.settings
    marker = f"replicated-{uuid.uuid4().hex}"
    async with AsyncExitStack() as stack:
        alice, sender, bob, recipient = await _two_gateways_apart(cluster_system, stack)
        cid = direct_conversation_id(alice, bob)
        ack = await sender.send_message(cid, marker)
        pushed = await recipient.expect("message", timeout=30)
        assert pushed["message"]["body"] == marker  # across gateways, through HAProxy

        async def persisted() -> bool:
            return await asyncio.to_thread(_in_cassandra, settings, cid, int(ack["message_id"]))

        await _until(persisted, 60, "the persist worker wrote the message")

        broker, node = profile.kafka_nodes(settings)[1], profile.cassandra_nodes(settings)[1]
        _kill_9(broker)
        _kill_9(node)
        killed_at = time.monotonic()

        async def in_kafka() -> bool:
            return await _in_kafka(settings, cid, marker.encode())

        kafka_s = await _until(in_kafka, 90, f"the record in Kafka without {broker.name}")
        cassandra_s = await _until(persisted, 90, f"the row at LOCAL_QUORUM without {node.name}")

        async def in_history() -> bool:
            return marker in await _history(cluster_system, bob, cid)

        await _until(in_history, 90, "the message in bob's history through HAProxy")

        # Sends go on: acks=all needs 2 in-sync replicas of 3, LOCAL_QUORUM 2 nodes of 3.
        after = f"after-kill-{uuid.uuid4().hex}"
        again = await sender.send_message(cid, after)
        assert again["message_id"].isdigit(), again
        await recipient.expect("message", timeout=60)

        async def after_persisted() -> bool:
            return await asyncio.to_thread(_in_cassandra, settings, cid, int(again["message_id"]))

        await _until(after_persisted, 90, "a message sent after the kills, persisted")
        print(
            f"after kill -9 of {broker.name} and {node.name}: record read from Kafka in {kafka_s:.1f} s, "
            f"row at LOCAL_QUORUM in {cassandra_s:.1f} s, all checks done in "
            f"{time.monotonic() - killed_at:.1f} s"
        )
