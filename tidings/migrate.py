"""``tidings migrate``: Kafka topics and the Cassandra keyspace and tables. Idempotent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from events import Topics
from projections.adapters.cql import connect_to
from projections.adapters.migrate import migrate_cassandra
from tidings.media_store import ensure_bucket
from tidings.settings import Settings

# The event log is the truth: never compacted, kept until the archive's watermark says otherwise.
_LOG_CONFIG = {"cleanup.policy": "delete", "retention.ms": "-1"}


def topic_configs(settings: Settings) -> dict[str, str]:
    """The configs every topic of the project is created with."""
    return {**_LOG_CONFIG, "min.insync.replicas": str(settings.kafka_min_insync_replicas)}


def new_topic(settings: Settings, name: str, partitions: int | None = None) -> NewTopic:
    """``name`` as the settings say a topic is made: replication, ``min.insync.replicas``, and
    the log's retention. Tests and benchmarks that make topics of their own use it too."""
    return NewTopic(
        name,
        settings.topic_partitions if partitions is None else partitions,
        settings.kafka_replication,
        topic_configs=topic_configs(settings),
    )


async def create_log_topics(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> None:
    """Create ``topics``; one that exists already is fine (a concurrent migrate), any other
    refusal raises. aiokafka returns the broker's per-topic errors without raising them."""
    response = await admin.create_topics(topics)
    for name, code, *rest in response.topic_errors:
        if code and code != TopicAlreadyExistsError.errno:
            message = rest[0] if rest and rest[0] else ""
            raise for_code(code)(f"cannot create topic {name}: {message}")


async def create_topics(settings: Settings, *, echo: Callable[[str], None] = print) -> list[str]:
    """Create the topics that are missing; fail if one exists with another partition count, and
    report one whose replication or ``min.insync.replicas`` differs from the settings."""
    topics = Topics(settings.topic_prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [new_topic(settings, name) for name in topics.all() if name not in existing]
        if wanted:
            await create_log_topics(admin, wanted)
        described = await _described(admin, list(topics.all()))
        for topic in described:
            count = len(topic["partitions"])
            if count != settings.topic_partitions:
                raise SystemExit(
                    f"topic {topic['topic']} has {count} partitions, settings say "
                    f"{settings.topic_partitions}; changing it would move conversations between "
                    "partitions and break their order"
                )
            replicas = {len(p["replicas"]) for p in topic["partitions"]}
            if replicas != {settings.kafka_replication}:
                echo(
                    f"kafka: WARNING topic {topic['topic']} has {sorted(replicas)} replicas per "
                    f"partition, settings say {settings.kafka_replication} (a partition reassignment "
                    "changes it; migrate does not)"
                )
        insync = await topic_config(admin, list(topics.all()), "min.insync.replicas")
        for name, value in insync.items():
            if value != str(settings.kafka_min_insync_replicas):
                echo(
                    f"kafka: WARNING topic {name} has min.insync.replicas={value}, settings say "
                    f"{settings.kafka_min_insync_replicas}; to change it: kafka-configs.sh --alter "
                    f"--entity-type topics --entity-name {name} --add-config "
                    f"min.insync.replicas={settings.kafka_min_insync_replicas}"
                )
        for new in wanted:
            echo(
                f"kafka: created topic {new.name} ({settings.topic_partitions} partitions, "
                f"replication {settings.kafka_replication}, "
                f"min.insync.replicas {settings.kafka_min_insync_replicas})"
            )
        return [t.name for t in wanted]
    finally:
        await admin.close()


async def _described(admin: AIOKafkaAdminClient, topics: list[str], wait_s: float = 30.0) -> list[Any]:
    """``describe_topics`` once every topic has its partitions: right after CreateTopics the
    broker's metadata can still show a new topic with no partitions (leader not yet known)."""
    deadline = time.monotonic() + wait_s
    while True:
        described = await admin.describe_topics(topics)
        pending = [t["topic"] for t in described if t["error_code"] or not t["partitions"]]
        if not pending:
            return described
        if time.monotonic() > deadline:
            raise SystemExit(f"kafka: topics {pending} have no partitions after {wait_s:.0f}s")
        await asyncio.sleep(0.2)


async def topic_config(admin: AIOKafkaAdminClient, topics: list[str], key: str) -> dict[str, str]:
    """Each topic's value of config ``key`` (its own or the broker's default)."""
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name, configs={key: None}) for name in topics]
    )
    found: dict[str, str] = {}
    for response in responses:
        for code, message, _, name, entries, *_ in response.resources:
            if code:
                raise for_code(code)(f"cannot read the configs of topic {name}: {message}")
            for config, value, *_ in entries:
                if config == key:
                    found[name] = value
    return found


def migrate_cassandra_from_settings(settings: Settings, *, echo: Callable[[str], None] = print) -> list[int]:
    cluster, session = connect_to(settings)
    try:
        return migrate_cassandra(
            session,
            settings.cassandra_keyspace,
            replication=settings.cassandra_replication_map(),
            echo=echo,
        )
    finally:
        cluster.shutdown()


async def migrate(settings: Settings, *, echo: Callable[[str], None] = print) -> None:
    await create_topics(settings, echo=echo)
    migrate_cassandra_from_settings(settings, echo=echo)
    await ensure_bucket(settings, echo=echo)
    echo("migrations: up to date")
