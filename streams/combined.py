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
from typing import Any, Protocol, runtime_checkable

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

    async def apply_at(self, events: Sequence[tuple[int, int, ChatEvent]]) -> None:
        plain = [event for _, _, event in events]
        work: list[Statement] = []
        alone: list[Stage | PositionedStage] = []
        after: list[Statement] = []
        for stage in self._stages:
            if isinstance(stage, PositionedWrites):
                work += await stage.writes_at(events)
                after += stage.after_writes_at(events)
            elif isinstance(stage, Writes):
                work += await stage.writes(plain)
            else:
                alone.append(stage)
        work = list(dict.fromkeys(work))
        await self._cql.execute_all(work, partitions_per_batch=self._partitions_per_batch)
        for stage in self._stages:
            if isinstance(stage, RemembersWrites):
                stage.written(work)
        for stage in alone:
            if isinstance(stage, PositionedStage):
                await stage.apply_at(events)
            else:
                await stage.apply(plain)
        # the watermarks, one row per log partition of the batch: one request for all (they
        # were one each, ~9 of a persist round's ~10 requests at 200 msgs/s once its other rows
        # went as one batch: docs/benchmarks.md, session 12)
        await self._cql.execute_all(after, partitions_per_batch=self._partitions_per_batch)
