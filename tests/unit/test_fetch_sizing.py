"""The background consumer groups' fetch sizing (streams.adapters.faust_fetch): the aiokafka
consumer Faust builds for a worker gets the wait and minimum size, the delivery group Faust's
own (answer at the first record)."""

from __future__ import annotations

import asyncio

import pytest

from events import Topics
from streams.adapters.faust_fetch import FETCH_MIN_BYTES
from streams.app import create_app
from tidings.settings import Settings


async def _consumer_config(fetch_wait_ms: int) -> tuple[int, int]:
    app = create_app(
        app_id="t-fetch-sizing",
        bootstrap="127.0.0.1:1",  # never connected: only the consumer's construction is looked at
        topics=Topics("t."),
        partitions=1,
        stages=[],
        batch_size=10,
        batch_window_s=0.05,
        session_timeout_s=10.0,
        fetch_wait_ms=fetch_wait_ms,
    )
    app.loop = asyncio.get_running_loop()
    thread = app.consumer._thread  # type: ignore[attr-defined]
    consumer = thread._create_worker_consumer(app.transport)
    try:
        return consumer._fetch_min_bytes, consumer._fetch_max_wait_ms
    finally:
        await consumer.stop()
        thread.thread_loop.close()  # made with the (never started) consumer thread


@pytest.mark.asyncio
async def test_background_group_fetches_wait_and_gather() -> None:
    assert await _consumer_config(50) == (FETCH_MIN_BYTES, 50)


@pytest.mark.asyncio
async def test_delivery_group_fetch_answers_at_the_first_record() -> None:
    min_bytes, _ = await _consumer_config(0)
    assert min_bytes == 1


def test_background_wait_is_the_persist_batch_window() -> None:
    assert Settings(worker_persist_batch_window_s=0.05).worker_background_fetch_wait_ms == 50
    assert Settings(worker_persist_batch_window_s=0.0001).worker_background_fetch_wait_ms == 1
