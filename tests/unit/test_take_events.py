"""streams.adapters.faust_take: batches as Faust's take_events makes them, acked after the
batch, and no timer while nothing is buffered (issue #19)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust

from streams.adapters.faust_take import Stream


def _app(stream_class: type | None) -> faust.App:
    kwargs: dict[str, Any] = {"Stream": stream_class} if stream_class else {}
    app = faust.App(
        "t-take-events", broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False, **kwargs
    )
    app.loop = asyncio.get_running_loop()
    app.finalize()
    app.flow_control.resume()
    return app


async def _run(stream_class: type | None, puts: int, idle_s: float) -> tuple[list[list[bytes]], int]:
    app = _app(stream_class)
    batches: list[list[bytes]] = []
    waits = 0

    @app.agent()
    async def agent(stream: Any) -> None:
        nonlocal waits
        original = stream.wait_for_stopped

        async def counted(*args: Any, **kwargs: Any) -> bool:
            nonlocal waits
            waits += 1
            result: bool = await original(*args, **kwargs)
            return result

        stream.wait_for_stopped = counted
        async for batch in stream.take_events(3, within=0.005):
            batches.append([ev.value for ev in batch])

    async with agent.test_context() as a:
        await asyncio.sleep(idle_s)  # idle: Faust's loop ticks every 5 ms here
        idle_waits = waits
        for i in range(puts):
            await a.put(f"v{i}".encode(), wait=False)
        for _ in range(100):
            if sum(map(len, batches)) == puts:
                break
            await asyncio.sleep(0.01)
    _close_thread_loops(app)
    return batches, idle_waits


def _close_thread_loops(app: faust.App) -> None:
    """The consumer and producer threads' own loops, made but never started here."""
    for service in (app.consumer, app.producer):
        thread = getattr(service, "_thread", None) or getattr(service, "_producer_thread", None)
        loop = getattr(thread, "thread_loop", None)
        if loop is not None and not loop.is_running():
            loop.close()


async def test_batches_hold_every_event_once_in_order_and_at_most_max() -> None:
    batches, _ = await _run(Stream, 7, 0.0)
    assert [v for b in batches for v in b] == [f"v{i}".encode() for i in range(7)]
    assert all(1 <= len(b) <= 3 for b in batches)


async def test_no_wakeups_while_idle() -> None:
    _, ours = await _run(Stream, 0, 0.2)
    _, fausts = await _run(None, 0, 0.2)
    assert ours <= 1
    assert fausts >= 10  # Faust's own loop: one wait per 5 ms window, events or not
