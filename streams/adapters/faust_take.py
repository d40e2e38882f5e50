"""``Stream.take_events`` without a timer while nothing is buffered.

Faust's ``take_events(max_, within)`` (faust/streams.py) loops on
``wait_for_stopped(buffer_full, timeout=within)``: every ``within`` seconds, events or not,
each agent wakes and mode's ``Service.wait`` builds its futures and an ``asyncio.wait``. With
the deliver role's 5 ms window that is 200 wake-ups a second per agent (three agents per
deliver worker), which py-spy put at a fifth of the deliver worker's busy time at 200 msgs/s
(docs/benchmarks.md, issue #19). Here the loop first sleeps until an event is buffered, then
waits at most ``within`` for the batch to fill: a batch still holds everything that arrived
within ``within`` of its first event and at most ``max_`` events; an idle agent never wakes.

Since the batch agents (``streams.adapters.faust_batches``) only the media topic's Faust agents,
which share their topic, take their batches here.

The rest is Faust's code as it is in faust-streaming 0.15.3 (acks after the batch is handled,
the buffer closed to the stream while the batch is consumed, the processor removed at the end).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any, cast

import faust
from faust.streams import _tracks_buffer_agen
from faust.types import EventT
from mode import Seconds, want_seconds
from mode.utils.aiter import aiter
from mode.utils.futures import notify


class Stream(faust.Stream):
    @_tracks_buffer_agen
    async def take_events(self, max_: int, within: Seconds) -> AsyncGenerator[Sequence[EventT], None]:
        buffer: list[Any] = []
        events: list[EventT] = []
        buffer_started = asyncio.Event()
        buffer_full = asyncio.Event()
        buffer_consumed = asyncio.Event()
        timeout = want_seconds(within) if within else None
        stream_enable_acks: bool = self.enable_acks
        buffer_consuming: asyncio.Future[Any] | None = None
        channel_it = aiter(self.channel)

        async def add_to_buffer(value: Any) -> Any:
            try:
                nonlocal buffer_consuming
                if buffer_consuming is not None:
                    try:
                        await buffer_consuming
                    finally:
                        buffer_consuming = None
                buffer.append(value)
                event = self.current_event
                if event is None:
                    raise RuntimeError("Take buffer found current_event is None")
                events.append(event)
                buffer_started.set()
                if len(buffer) >= max_:
                    buffer_full.set()
                    buffer_consumed.clear()
                    await self.wait(buffer_consumed)  # type: ignore[arg-type]
            except asyncio.CancelledError:  # pragma: no cover
                raise
            except Exception as exc:
                self.log.exception("Error adding to take buffer: %r", exc)
                await self.crash(exc)
            return value

        self.enable_acks = False
        self.add_processor(add_to_buffer)
        self._enable_passive(cast(Any, channel_it))
        try:
            while not self.should_stop:
                if not buffer:
                    # No timer while idle: sleep until the first event is buffered.
                    await self.wait_for_stopped(buffer_started)  # type: ignore[arg-type]
                    if self.should_stop:
                        break
                # Then at most ``within`` for more, unless the batch is full first.
                await self.wait_for_stopped(buffer_full, timeout=timeout)  # type: ignore[arg-type]
                if buffer:
                    buffer_consuming = self.loop.create_future()
                    try:
                        yield list(events)
                    finally:
                        buffer.clear()
                        for event in events:
                            await self.ack(event)
                        events.clear()
                        buffer_started.clear()
                        notify(buffer_consuming)
                        buffer_full.clear()
                        buffer_consumed.set()
        finally:
            self.enable_acks = stream_enable_acks
            self._processors.remove(add_to_buffer)
