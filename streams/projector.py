"""Applies batches of log events to the read models without ever losing one.

Faust commits an event's offset even when the agent raised, so nothing may escape here:
- a store that is down (``Unavailable``) is retried with capped backoff for as long as it takes;
  the partition waits and no offset moves past an unapplied event;
- an event that cannot be decoded or applied (a poison event) goes to the dead-letter topic
  with its error, and the partition moves on;
- each stage records that it finished, so a retry of the Cassandra stage does not push the
  same frames again.
Applying is idempotent, so redeliveries after a crash change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

from events import ChatEvent, decode_event
from events.errors import Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One log entry as the projector sees it: where it came from and its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Mapping[str, bytes] = field(default_factory=dict)


class DeadLetters(Protocol):
    async def send(self, record: Record, error: str) -> None: ...


class BatchTrace(Protocol):
    def stage(self, name: str) -> AbstractContextManager[Any]: ...
    def close(self) -> None: ...


class Tracer(Protocol):
    """Spans for a decoded batch (``tidings.telemetry.RecordTracer``); None when no record is
    traced. It sees the events too, so a stage can find an event's span."""

    def batch(self, records: Sequence[tuple[Record, ChatEvent]]) -> BatchTrace | None: ...


class Stage(Protocol):
    name: str

    async def apply(self, events: Sequence[ChatEvent]) -> None: ...


@runtime_checkable
class PositionedStage(Protocol):
    """A stage that needs each event's place in the log (partition and offset)."""

    name: str

    async def apply_at(self, events: Sequence[tuple[int, int, ChatEvent]]) -> None:
        """``(partition, offset, event)`` in log order per partition."""


class Projector:
    def __init__(
        self,
        stages: Sequence[Stage | PositionedStage],
        dead_letters: DeadLetters,
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        max_backoff_s: float = 5.0,
        on_applied: Callable[[str, int, float], None] | None = None,
        on_unavailable: Callable[[str, int], None] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._stages = list(stages)
        # Asked once: an isinstance of a runtime-checkable protocol costs ~10 µs on Python 3.11,
        # per batch and stage before (the deliver worker's batches hold one or two events).
        self._positioned = {id(s) for s in self._stages if isinstance(s, PositionedStage)}
        self._dead_letters = dead_letters
        self._sleep = sleep
        self._max_backoff_s = max_backoff_s
        self._on_applied = on_applied
        self._on_unavailable = on_unavailable
        self._tracer = tracer

    async def handle(self, records: Sequence[Record]) -> None:
        """Apply a batch; returns only when every record is applied or dead-lettered."""
        events: list[tuple[Record, ChatEvent]] = []
        for record in records:
            try:
                events.append((record, decode_event(record.value)))
            except ValueError as exc:
                await self._dead_letter(record, f"undecodable: {exc}")
        trace = self._tracer.batch(events) if self._tracer is not None else None
        try:
            await self.handle_decoded(events, trace)
        finally:
            if trace is not None:
                trace.close()

    async def handle_decoded(
        self, events: list[tuple[Record, ChatEvent]], trace: BatchTrace | None = None
    ) -> None:
        """Apply events already decoded (replay from the archive), with the same guarantees."""
        for stage in self._stages:
            with trace.stage(stage.name) if trace is not None else contextlib.nullcontext():
                await self._apply(stage, events)

    async def _apply(self, stage: Stage | PositionedStage, events: list[tuple[Record, ChatEvent]]) -> None:
        if not events:
            return
        delay = 0.05
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                if id(stage) in self._positioned:
                    at = [(r.partition, r.offset, event) for r, event in events]
                    await cast(PositionedStage, stage).apply_at(at)
                else:
                    await cast(Stage, stage).apply([event for _, event in events])
            except Unavailable as exc:
                if self._on_unavailable is not None:
                    self._on_unavailable(stage.name, len(events))
                log.warning("%s unavailable (%s); retrying in %.2fs", stage.name, exc.__cause__ or exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, self._max_backoff_s)
                continue
            except Exception as exc:  # noqa: BLE001 - a poison event must not stop the partition
                if len(events) == 1:
                    record = events[0][0]
                    log.error(
                        "%s cannot apply %s:%s@%s: %r",
                        stage.name,
                        record.topic,
                        record.partition,
                        record.offset,
                        exc,
                    )
                    await self._dead_letter(record, f"{stage.name}: {exc!r}")
                    return
                # Find the poison one: apply the batch one event at a time.
                for item in events:
                    await self._apply(stage, [item])
                return
            if self._on_applied is not None:
                self._on_applied(stage.name, len(events), loop.time() - started)
            return

    async def _dead_letter(self, record: Record, error: str) -> None:
        delay = 0.05
        while True:
            try:
                await self._dead_letters.send(record, error)
                return
            except Exception as exc:  # noqa: BLE001 - keep trying: dropping it would lose the event
                log.warning("dead-letter topic unavailable (%r); retrying in %.2fs", exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, self._max_backoff_s)
