"""Waiting on a worker role's consumer group instead of on time: ``handled`` returns once the
group has committed past everything appended to one key's partition so far.

A worker role commits an offset only after it has handled the records below it (the Faust
roles ack a batch once its stages are done, and the notifier's jobs are appended before that;
the push sender commits below its lowest window still open, so a job's notification has been
delivered, retried or dead-lettered by then). So when ``handled`` returns, whatever the role
was going to do about those records is done, and a test may assert that something did NOT
happen without waiting for a fixed time."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from events.topics import Topics
from streams.adapters.offsets import committed_offsets
from tests.e2e.conftest import System, wait_until


async def handled(system: System, role: str, topic: str, key: str, timeout_s: float = 60) -> None:
    """Until the consumer group of worker role ``role`` (``notify``, ``push``, ...) has handled
    every record of ``topic`` appended so far to the partition of ``key``."""
    settings = system.settings
    partitions = list(range(settings.topic_partitions))
    tp = TopicPartition(topic, DefaultPartitioner()(key.encode(), partitions, partitions))
    group = f"{settings.worker_app_id}-{role}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    ends = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await admin.start()
    try:
        await ends.start()
        try:
            end = (await ends.end_offsets([tp]))[tp]
            # A group commits nothing for a partition it never had a record of to handle.
            start = (await ends.beginning_offsets([tp]))[tp]
        finally:
            await ends.stop()

        async def committed() -> int:
            offsets = await committed_offsets(admin, group, topic, settings.topic_partitions)
            return offsets.get(tp.partition, start)

        async def caught_up() -> bool:
            return await committed() >= end

        if not await wait_until(caught_up, timeout=timeout_s, interval=0.2):
            raise AssertionError(
                f"{group} did not handle {tp} up to {end} in {timeout_s} s (committed {await committed()})"
            )
    finally:
        await admin.close()


async def push_settled(system: System, conversations: Iterable[str], users: Iterable[str]) -> None:
    """Until the notifier has handled every message of ``conversations`` so far, then the
    push sender every job of ``users``: any notification those messages were to cause has
    been delivered (or retried, or dead-lettered) by then, so its absence is a fact."""
    topics = Topics(system.settings.topic_prefix)
    for cid in conversations:
        await handled(system, "notify", topics.conversation_events, cid)
    for uid in users:
        await handled(system, "push", topics.notifications, uid)
