"""``tidings migrate``: Kafka topics and the Cassandra keyspace and tables. Idempotent."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from events import Topics
from projections.cql import connect_to
from projections.migrate import migrate_cassandra
from tidings.media_store import ensure_bucket
from tidings.settings import Settings

# The event log is the truth: never compacted, kept until the archive's watermark says otherwise.
_LOG_CONFIG = {"cleanup.policy": "delete", "retention.ms": "-1"}


async def create_topics(settings: Settings, *, echo: Callable[[str], None] = print) -> list[str]:
    """Create the topics that are missing; fail if one exists with another partition count."""
    topics = Topics(settings.topic_prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, settings.topic_partitions, 1, topic_configs=dict(_LOG_CONFIG))
            for name in topics.all()
            if name not in existing
        ]
        if wanted:
            # A concurrent migrate may have created them first: fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(wanted)
        described = await admin.describe_topics(list(topics.all()))
        for topic in described:
            count = len(topic["partitions"])
            if count != settings.topic_partitions:
                raise SystemExit(
                    f"topic {topic['topic']} has {count} partitions, settings say "
                    f"{settings.topic_partitions}; changing it would move conversations between "
                    "partitions and break their order"
                )
        for new in wanted:
            echo(f"kafka: created topic {new.name} ({settings.topic_partitions} partitions)")
        return [t.name for t in wanted]
    finally:
        await admin.close()


def migrate_cassandra_from_settings(settings: Settings, *, echo: Callable[[str], None] = print) -> list[int]:
    cluster, session = connect_to(settings)
    try:
        return migrate_cassandra(
            session,
            settings.cassandra_keyspace,
            replication_factor=settings.cassandra_replication_factor,
            echo=echo,
        )
    finally:
        cluster.shutdown()


async def migrate(settings: Settings, *, echo: Callable[[str], None] = print) -> None:
    await create_topics(settings, echo=echo)
    migrate_cassandra_from_settings(settings, echo=echo)
    await ensure_bucket(settings, echo=echo)
    echo("migrations: up to date")
