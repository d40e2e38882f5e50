"""``KafkaEventLog`` against the real broker: durable appends, keyed like Faust keys them."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from commands.adapters.kafka_log import KafkaEventLog
from events import Topics, decode_event
from tests.contracts import spread_ids
from tests.factories import message_sent
from tidings.settings import Settings


async def test_append_lands_on_the_conversations_partition(services: Settings) -> None:
    topics = Topics(services.topic_prefix)
    cid = f"dm:alice:u{uuid.uuid4().hex[:10]}"
    [mid] = spread_ids(1, step_ms=1)
    event = message_sent(mid, conversation_id=cid)
    producer = KafkaEventLog.producer(services.kafka_bootstrap, linger_ms=2)
    await producer.start()
    try:
        await KafkaEventLog(producer, topics).append(event)
    finally:
        await producer.stop()

    partitions = list(range(services.topic_partitions))
    expected = DefaultPartitioner()(cid.encode(), partitions, partitions)
    tp = TopicPartition(topics.conversation_events, expected)
    consumer = AIOKafkaConsumer(bootstrap_servers=services.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, max(0, end - 50))
        found: list[Any] = []
        while not found:
            batch = await consumer.getmany(tp, timeout_ms=2000)
            records = batch.get(tp, [])
            assert records, "event not found on the expected partition"
            found = [r for r in records if r.key == cid.encode() and decode_event(r.value) == event]
    finally:
        await consumer.stop()


async def test_concurrent_appends_that_linger_together_all_land_once_in_call_order(
    services: Settings,
) -> None:
    """The linger that follows the send rate (``LingeringProducer``): 40 appends at once to one
    conversation, so all but the first wait for company and go in shared requests; each is in
    the log once, in the order the appends were called (acks=all: confirmed means there)."""
    topics = Topics(services.topic_prefix)
    cid = f"dm:alice:u{uuid.uuid4().hex[:10]}"
    events = [message_sent(mid, conversation_id=cid) for mid in spread_ids(40, step_ms=1)]
    producer = KafkaEventLog.producer(services.kafka_bootstrap, linger_ms=20)
    await producer.start()
    try:
        log = KafkaEventLog(producer, topics)
        await asyncio.gather(*(log.append(event) for event in events))
    finally:
        await producer.stop()

    partitions = list(range(services.topic_partitions))
    tp = TopicPartition(
        topics.conversation_events, DefaultPartitioner()(cid.encode(), partitions, partitions)
    )
    consumer = AIOKafkaConsumer(bootstrap_servers=services.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, max(0, end - 400))
        found: list[Any] = []
        while len(found) < len(events):
            batch = await consumer.getmany(tp, timeout_ms=2000)
            records = batch.get(tp, [])
            assert records, f"only {len(found)} of the {len(events)} events on the partition"
            found += [decode_event(r.value) for r in records if r.key == cid.encode()]
    finally:
        await consumer.stop()
    assert found == events
