"""Waiting on a worker role's consumer group instead of on time: ``handled`` returns once the
group has committed past everything appended to one key's partition so far.

A worker role commits an offset only after it has handled the records below it (the Faust
roles ack a batch once its stages are done, and the notifier's jobs are appended before that;
the push sender commits below its lowest window still open, so a job's notification has been
delivered, retried or dead-lettered by then). So when ``handled`` returns, whatever the role
was going to do about those records is done, and a test may assert that something did NOT
happen without waiting for a fixed time."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

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
        finally:
            await ends.stop()

        async def committed() -> int:
            offsets = await committed_offsets(admin, group, topic, settings.topic_partitions)
            return offsets.get(tp.partition, -1)

        async def caught_up() -> bool:
            return await committed() >= end

        if not await wait_until(caught_up, timeout=timeout_s, interval=0.2):
            raise AssertionError(
                f"{group} did not handle {tp} up to {end} in {timeout_s} s (committed {await committed()})"
            )
    finally:
        await admin.close()
