"""Several Cassandra read models applied as one stage: the writes of all of them for a batch of
events go out in one ``Cql.execute_all``, so rows of one partition key in different tables
(a conversation's row, its members, its receipts, its bucket list) share one request.

Each read model keeps its own module and its own ``apply``; it only also says what it would
write (``writes`` / ``writes_at``) and, for the sync log, what may be written only once every
read model has the batch (``after_writes_at``, the watermark). Every write is an idempotent
upsert whose outcome does not depend on the order it is applied in (``USING TIMESTAMP`` from
the event, or the same values for the same key), so one concurrent round for all of them gives
the same rows as one round per read model. A read model that cannot say its writes is applied
on its own, after the round and before the watermark. A read model that writes some rows once
for good (the sync log's bucket rows, which nothing deletes) is told when the round is written
(``written``) and leaves them out of later batches.

The persist worker applies its read models this way too (``tidings.worker``, stage ``persist``):
for a batch of 1:1 messages that is one round (each message's rows fall in five partitions: the
two inbox rows, the message, the conversation's head keyed by its id, its log row; small
partitions share UNLOGGED batches up to the node's thresholds, ``Cql.execute_all``) and then
the watermarks, one row per log partition, packed the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast, runtime_checkable

from events import ChatEvent
from projections.adapters.cql import Cql
from streams.projector import PositionedStage, Stage

Statement = tuple[str, tuple[Any, ...]]


@runtime_checkable
class Writes(Protocol):
    name: str

    async def writes(self, events: Sequence[ChatEvent]) -> list[Statement]:
        """What applying ``events`` writes (and any in-memory state moved past them)."""


@runtime_checkable
class PositionedWrites(Protocol):
    name: str

    async def writes_at(self, events: Sequence[tuple[int, int, ChatEvent]]) -> list[Statement]:
        """What applying ``(partition, offset, event)`` writes."""

    def after_writes_at(self, events: Sequence[tuple[int, int, ChatEvent]]) -> list[Statement]:
        """What may be written only once everything else of the batch is written."""


@runtime_checkable
class RemembersWrites(Protocol):
    def written(self, work: Sequence[Statement]) -> None:
        """``work`` (its own rows among others') is written: rows written once for good (the sync
        log's bucket rows) may be left out of later batches."""


class CombinedWrites:
    """A ``PositionedStage`` applying ``stages`` (in their order) with one round of writes."""

    def __init__(
        self,
        cql: Cql,
        stages: Sequence[Stage | PositionedStage],
        *,
        name: str | None = None,
        partitions_per_batch: int = 100,  # as settings.cassandra_batch_partitions; the node bounds it
    ) -> None:
        self._cql = cql
        self._partitions_per_batch = partitions_per_batch
        self._stages = list(stages)
        self.name = name or "+".join(s.name for s in self._stages)
        # What each stage can do, asked once: an isinstance of a runtime-checkable protocol
        # costs ~10 µs on Python 3.11, and a batch asked it up to three times per stage.
        self._says: list[tuple[Stage | PositionedStage, str]] = [
            (s, "at" if isinstance(s, PositionedWrites) else "plain" if isinstance(s, Writes) else "alone")
            for s in self._stages
        ]
        self._remembers = [s for s in self._stages if isinstance(s, RemembersWrites)]
        self._positioned = {id(s) for s in self._stages if isinstance(s, PositionedStage)}

    async def apply_at(self, events: Sequence[tuple[int, int, ChatEvent]]) -> None:
        plain = [event for _, _, event in events]
        work: list[Statement] = []
        alone: list[Stage | PositionedStage] = []
        after: list[Statement] = []
        for stage, says in self._says:
            if says == "at":
                writer = cast(PositionedWrites, stage)
                work += await writer.writes_at(events)
                after += writer.after_writes_at(events)
            elif says == "plain":
                work += await cast(Writes, stage).writes(plain)
            else:
                alone.append(stage)
        work = list(dict.fromkeys(work))
        await self._cql.execute_all(work, partitions_per_batch=self._partitions_per_batch)
        for remembers in self._remembers:
            remembers.written(work)
        for stage in alone:
            if id(stage) in self._positioned:
                await cast(PositionedStage, stage).apply_at(events)
            else:
                await cast(Stage, stage).apply(plain)
        # the watermarks, one row per log partition of the batch: one request for all (they
        # were one each, ~9 of a persist round's ~10 requests at 200 msgs/s once its other rows
        # went as one batch: docs/benchmarks.md, session 12)
        await self._cql.execute_all(after, partitions_per_batch=self._partitions_per_batch)
