"""Against the real Kafka and Cassandra: `tidings migrate` makes the topics with the configured
``min.insync.replicas`` as their own topic config (not the broker's default), and the keyspace
with the configured replication map. One broker and one node here, so replication stays 1."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from events import Topics
from projections.adapters.cql import connect_to
from tidings.migrate import create_topics, migrate_cassandra_from_settings
from tidings.settings import Settings

DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs v1+ config_source: set on the topic itself


@pytest.fixture
def fresh(services: Settings) -> Iterator[Settings]:
    """Settings with topics and a keyspace of their own, deleted afterwards."""
    suffix = uuid.uuid4().hex[:8]
    settings = services.model_copy(
        update={
            "topic_prefix": f"{services.topic_prefix}repl{suffix}.",
            "topic_partitions": 2,
            "cassandra_keyspace": f"{services.cassandra_keyspace}_repl{suffix}",
            "cassandra_replication": {"class": "NetworkTopologyStrategy", services.cassandra_local_dc: 1},
        }
    )
    yield settings

    async def delete_topics() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(list(Topics(settings.topic_prefix).all()))
        finally:
            await admin.close()

    asyncio.run(delete_topics())
    cluster, session = connect_to(settings)
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra_keyspace}", timeout=120)
    finally:
        cluster.shutdown()


async def _min_insync(settings: Settings, topics: list[str]) -> dict[str, tuple[str, Any]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, t, configs={"min.insync.replicas": None})
                for t in topics
            ]
        )
    finally:
        await admin.close()
    found = {}
    for response in responses:
        assert response.API_VERSION >= 1, "config_source needs DescribeConfigs v1+"
        for code, _, _, name, entries, *_ in response.resources:
            assert code == 0, (name, code)
            for key, value, _, source, *_ in entries:
                if key == "min.insync.replicas":
                    found[name] = (value, source)
    return found


async def test_migrated_topics_carry_the_configured_min_insync_replicas(fresh: Settings) -> None:
    said: list[str] = []
    created = await create_topics(fresh, echo=said.append)
    topics = sorted(Topics(fresh.topic_prefix).all())
    assert sorted(created) == topics
    assert all("replication 1, min.insync.replicas 1" in line for line in said), said
    assert await _min_insync(fresh, topics) == {t: ("1", DYNAMIC_TOPIC_CONFIG) for t in topics}

    admin = AIOKafkaAdminClient(bootstrap_servers=fresh.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    assert {len(p["replicas"]) for t in described for p in t["partitions"]} == {1}

    # Run again: nothing to create, nothing to report.
    said.clear()
    assert await create_topics(fresh, echo=said.append) == []
    assert said == []


async def test_a_replication_the_cluster_cannot_have_fails_migrate(fresh: Settings) -> None:
    """Three replicas on one broker: the broker refuses, and migrate says so (it used to read
    the refusal as success, then fail on "0 partitions")."""
    from aiokafka.errors import InvalidReplicationFactorError

    three = fresh.model_copy(update={"kafka_replication": 3})
    with pytest.raises(InvalidReplicationFactorError, match="cannot create topic"):
        await create_topics(three, echo=lambda _: None)


def test_the_keyspace_gets_the_configured_replication_map(fresh: Settings) -> None:
    said: list[str] = []
    migrate_cassandra_from_settings(fresh, echo=said.append)
    cluster, session = connect_to(fresh)
    try:
        row = session.execute(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
            (fresh.cassandra_keyspace,),
        ).one()
    finally:
        cluster.shutdown()
    assert dict(row.replication) == {
        "class": "org.apache.cassandra.locator.NetworkTopologyStrategy",
        fresh.cassandra_local_dc: "1",
    }
    assert not any("WARNING" in line for line in said), said
    # Settings that say otherwise leave the keyspace as it is and say how to change it.
    said.clear()
    simple = fresh.model_copy(update={"cassandra_replication": None})
    migrate_cassandra_from_settings(simple, echo=said.append)
    assert said == [
        f"cassandra: WARNING keyspace {fresh.cassandra_keyspace} has replication "
        f"{dict(row.replication)}, settings say {{'class': 'SimpleStrategy', 'replication_factor': 1}}; "
        f"to change it: ALTER KEYSPACE {fresh.cassandra_keyspace} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}, then nodetool repair on every node"
    ]
