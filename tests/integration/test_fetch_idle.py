"""A background group's consumer (streams.adapters.faust_fetch) against the real broker: idle, it
fetches about once per ``IDLE_WAIT_MS`` instead of once per batch window, a record still comes
through, and the fetch after it gathers again."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from streams.adapters import faust_fetch
from streams.adapters.faust_fetch import FETCH_MIN_BYTES, IDLE_WAIT_MS, IdleAwareFetcher
from tidings.settings import Settings

WINDOW_MS = 50
IDLE_S = 3.0


async def test_an_idle_background_group_fetches_rarely_and_still_gets_a_record(
    services: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetches = 0
    original = IdleAwareFetcher._proc_fetch_request

    async def counted(self: IdleAwareFetcher, *args: Any) -> bool:
        nonlocal fetches
        fetches += 1
        return await original(self, *args)

    monkeypatch.setattr(IdleAwareFetcher, "_proc_fetch_request", counted)
    topic = f"{services.topic_prefix}fetch-idle-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap)
    await producer.start()
    consumer = faust_fetch._BackgroundConsumer(
        topic,
        bootstrap_servers=services.kafka_bootstrap,
        group_id=f"{topic}-group",
        auto_offset_reset="earliest",
        fetch_min_bytes=FETCH_MIN_BYTES,
        fetch_max_wait_ms=WINDOW_MS,
    )
    try:
        await producer.send_and_wait(topic, b"before")  # makes the topic (auto-create)
        await consumer.start()
        first = await asyncio.wait_for(consumer.getone(), timeout=60)
        assert first.value == b"before"
        assert isinstance(consumer._fetcher, IdleAwareFetcher)

        # The consumer asks for the next record all along, as Faust's consumer thread does
        # (aiokafka fetches a partition again only once its last records were asked for).
        waiting = asyncio.create_task(consumer.getone())
        fetches = 0
        await asyncio.sleep(IDLE_S)
        # A 50 ms window alone would be ~60 fetches; waiting up to 1.5 s for a first record, 2-3.
        assert fetches <= IDLE_S * 1000 / IDLE_WAIT_MS + 2, fetches
        assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (1, IDLE_WAIT_MS)

        assert not waiting.done()
        await producer.send_and_wait(topic, b"after")
        second = await asyncio.wait_for(waiting, timeout=30)
        assert second.value == b"after"
        # The fetch that brought it set the next one to gather over the window again.
        assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (
            FETCH_MIN_BYTES,
            WINDOW_MS,
        )
    finally:
        await consumer.stop()
        await producer.stop()
