"""A Faust worker's readiness as a metric: ``tidings_consumer_ready`` for its group.

Faust has no readiness of its own to read. After a rebalance it sends ``on_rebalance_complete``,
then seeks to the committed offsets, resumes the partitions and clears ``app.rebalancing``
("Worker ready" in its log; ``faust/tables/recovery.py``). A partition without a committed
offset gets its position later still, when aiokafka's fetcher resets it (``auto_offset_reset``).
For the delivery group, whose reset is "latest", an event appended before that reset is never
pushed live (clients still get it from /v1/sync). So ready means: the rebalance is over and
``consumer.position`` has answered for every partition held. Only signals are used (once per
rebalance); a Faust sensor would be called for every event besides.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from aiokafka.errors import KafkaError

from streams.adapters.metrics import mark_ready, mark_rebalancing

log = logging.getLogger(__name__)

_POLL_S = 0.05


def report_readiness(app: faust.App) -> None:
    group = app.conf.id
    mark_rebalancing(group)
    tasks: set[asyncio.Task[None]] = set()

    async def revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        mark_rebalancing(group)

    async def complete(sender: Any, *args: Any, **kwargs: Any) -> None:
        # Sent before the seek that follows it: the positions are awaited in a task of their own.
        task = asyncio.ensure_future(_when_reading(app, group, app.consumer_generation_id))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # mode types a receiver's `signal` keyword as its own generic; the calls match it at runtime.
    app.on_partitions_revoked.connect(revoked)  # type: ignore[arg-type]
    app.on_rebalance_complete.connect(complete)  # type: ignore[arg-type]


async def _when_reading(app: faust.App, group: str, generation: int) -> None:
    # Faust has no awaitable end of a rebalance (on_rebalance_end is a plain method; its
    # recovery's `completed` event is never cleared): polled, during a rebalance only.
    while app.rebalancing:  # noqa: ASYNC110
        await asyncio.sleep(_POLL_S)
    if app.consumer_generation_id != generation:
        return  # another rebalance: its own completion reports
    try:
        await mark_ready(group, sorted(app.consumer.assignment()), app.consumer.position)
    except KafkaError as exc:  # revoked meanwhile, or stopping: the next rebalance reports again
        log.info("readiness of %s not reported: %r", group, exc)
