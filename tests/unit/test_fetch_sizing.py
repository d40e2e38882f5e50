"""The background consumer groups' fetch sizing (streams.adapters.faust_fetch): the aiokafka
consumer Faust builds for a worker gets the wait and minimum size, and after an empty fetch
answers at the first record; the delivery group keeps Faust's own (answer at the first record)."""

from __future__ import annotations

import asyncio

import aiokafka
import pytest
from aiokafka.consumer.fetcher import Fetcher
from pydantic import ValidationError

from streams.adapters.faust_fetch import FETCH_MIN_BYTES, IDLE_WAIT_MS, IdleAwareFetcher
from tests.unit.offline_app import offline_app
from tidings.settings import Settings


async def _looked_at(fetch_wait_ms: int) -> tuple[int, int, type]:
    """(fetch min bytes, fetch max wait, class) of the aiokafka consumer Faust builds for a
    worker's app with ``fetch_wait_ms``."""
    app = offline_app("t-fetch-sizing", fetch_wait_ms=fetch_wait_ms)
    app.loop = asyncio.get_running_loop()
    thread = app.consumer._thread  # type: ignore[attr-defined]
    consumer = thread._create_worker_consumer(app.transport)
    try:
        return consumer._fetch_min_bytes, consumer._fetch_max_wait_ms, type(consumer)
    finally:
        await consumer.stop()
        if thread.thread_loop is not asyncio.get_running_loop():
            thread.thread_loop.close()  # made with the (never started) consumer thread, if any


async def _consumer_config(fetch_wait_ms: int) -> tuple[int, int]:
    min_bytes, max_wait, _ = await _looked_at(fetch_wait_ms)
    return min_bytes, max_wait


@pytest.mark.asyncio
async def test_background_group_fetches_wait_and_gather() -> None:
    assert await _consumer_config(50) == (FETCH_MIN_BYTES, 50)


@pytest.mark.asyncio
async def test_delivery_group_fetch_answers_at_the_first_record() -> None:
    min_bytes, _ = await _consumer_config(0)
    assert min_bytes == 1


def test_each_background_role_waits_its_own_batch_window() -> None:
    settings = Settings(
        worker_persist_batch_window_s=0.12,
        worker_notify_batch_window_s=0.3,
        worker_search_batch_window_s=0.0001,
    )
    assert settings.background_fetch_wait_ms("persist") == 120
    assert settings.background_fetch_wait_ms("notify") == 300
    assert settings.background_fetch_wait_ms("search") == 1  # never 0: 0 is the delivery sizing


@pytest.mark.parametrize("role", ["persist", "notify", "search"])
def test_a_background_window_must_be_positive(role: str) -> None:
    with pytest.raises(ValidationError):
        Settings.model_validate({f"worker_{role}_batch_window_s": 0})


async def _swapped_class(fetch_wait_ms: int) -> type:
    return (await _looked_at(fetch_wait_ms))[2]


@pytest.mark.asyncio
async def test_only_background_groups_get_the_idle_aware_fetcher() -> None:
    assert (await _swapped_class(50)).__name__ == "_BackgroundConsumer"
    deliver = await _swapped_class(0)
    assert deliver.__name__ == "_DeliverConsumer" and issubclass(deliver, aiokafka.AIOKafkaConsumer)


@pytest.mark.asyncio
async def test_an_empty_fetch_makes_the_next_answer_at_the_first_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter([True, False, False, True, False])

    async def parent(self: Fetcher, assignment: object, node_id: int, request: object) -> bool:
        return next(answers)

    monkeypatch.setattr(Fetcher, "_proc_fetch_request", parent)
    fetcher = IdleAwareFetcher.__new__(IdleAwareFetcher)  # no client: only the sizing is looked at
    fetcher.batch_wait_ms = 50
    seen = []
    for _ in range(5):
        await fetcher._proc_fetch_request(None, 1, None)
        seen.append((fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms))
    gather, first_record = (FETCH_MIN_BYTES, 50), (1, IDLE_WAIT_MS)
    assert seen == [gather, first_record, first_record, gather, first_record]
