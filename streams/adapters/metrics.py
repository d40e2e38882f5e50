"""The workers' Prometheus metrics, defined once (served by ``tidings.worker`` on
``TIDINGS_WORKER_WEB_PORT``), and the consumer-lag exporter.

Lag is read from Kafka itself, not from Faust's internals: committed offsets of the worker's
consumer group (what a restart resumes from) against each partition's end offset. Faust keeps
its own ``_committed_offset`` bookkeeping, but what operators need is what Kafka holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import Counter, Gauge, Histogram

from projections.delivery_metrics import DELIVERY_FAILURES
from streams.adapters.offsets import committed_offsets

log = logging.getLogger(__name__)

EVENTS_APPLIED = Counter("tidings_projection_events_total", "Events applied, per projection", ["projection"])
APPLY_SECONDS = Histogram(
    "tidings_projection_batch_seconds",
    "Time to apply one batch, per projection (recent: Redis hot cache and pub/sub pushes; "
    "membership, receipts, messages: Cassandra)",
    ["projection"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_EVENTS = Histogram(
    "tidings_worker_batch_events",
    "Events per batch taken from the log",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
STAGE_UNAVAILABLE = Counter(
    "tidings_projection_unavailable_total",
    "Batch attempts that failed because the store was unavailable (then retried), per projection",
    ["projection"],
)
DEAD_LETTERS = Counter("tidings_dead_letters_total", "Events sent to the dead-letter topic", ["reason"])
CONSUMER_LAG = Gauge(
    "tidings_consumer_lag",
    "End offset minus committed offset, per partition of the worker's consumer group",
    ["group", "topic", "partition"],
)
END_OFFSET = Gauge("tidings_consumer_end_offset", "Partition end offset", ["group", "topic", "partition"])
COMMITTED_OFFSET = Gauge(
    "tidings_consumer_committed_offset", "Committed offset of the group", ["group", "topic", "partition"]
)

CONSUMER_READY = Gauge(
    "tidings_consumer_ready",
    "1 once this member of the group holds its partitions after a rebalance and has a read "
    "position on each; 0 before its first assignment and during a rebalance (`tidings up` waits "
    "for 1: a new delivery group starts at the log's end and skips what is appended before)",
    ["group"],
)
ASSIGNED_PARTITIONS = Gauge(
    "tidings_consumer_assigned_partitions", "Partitions this member of the group holds", ["group"]
)


def mark_rebalancing(group: str) -> None:
    CONSUMER_READY.labels(group).set(0)


async def mark_ready(
    group: str, partitions: Collection[TopicPartition], position: Callable[[TopicPartition], Awaitable[Any]]
) -> None:
    """``tidings_consumer_ready`` 1 once ``position`` (the consumer's: it waits for an offset
    reset or a seek) has answered for every partition held."""
    for tp in partitions:
        await position(tp)
    ASSIGNED_PARTITIONS.labels(group).set(len(partitions))
    CONSUMER_READY.labels(group).set(1)


RECENT = "recent"  # the deliver stage: its failures are failed deliveries


def observe_applied(projection: str, events: int, seconds: float) -> None:
    EVENTS_APPLIED.labels(projection).inc(events)
    APPLY_SECONDS.labels(projection).observe(seconds)


def observe_unavailable(projection: str, events: int) -> None:
    STAGE_UNAVAILABLE.labels(projection).inc()
    if projection == RECENT:
        DELIVERY_FAILURES.labels("publish").inc(events)


async def export_lag(bootstrap: str, group: str, topic: str, *, partitions: int, interval_s: float) -> None:
    """Every ``interval_s``, set the lag gauges of ``group`` on ``topic``; runs until cancelled.
    A partition the group never committed counts from the start of the log (earliest offset)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id=f"{group}-lag")
    offsets = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, client_id=f"{group}-lag", enable_auto_commit=False
    )
    started = False
    try:
        while not started:
            try:
                await admin.start()
                await offsets.start()
                started = True
            except Exception as exc:  # noqa: BLE001 - Kafka not up yet: metrics wait, the worker does not
                log.warning("lag exporter cannot reach Kafka (%r); retrying", exc)
                await asyncio.sleep(interval_s)
        while True:
            try:
                await _export_once(
                    admin, offsets, group, [TopicPartition(topic, p) for p in range(partitions)]
                )
            except Exception as exc:  # noqa: BLE001 - a metrics read must never stop the worker
                log.warning("lag read failed: %r", exc)
            await asyncio.sleep(interval_s)
    finally:
        with contextlib.suppress(Exception):
            await offsets.stop()
        with contextlib.suppress(Exception):
            await admin.close()


async def _export_once(
    admin: AIOKafkaAdminClient, offsets: AIOKafkaConsumer, group: str, tps: list[TopicPartition]
) -> None:
    # The partition count is fixed by the project (settings), so no metadata look-up is needed.
    ends = await offsets.end_offsets(tps)
    # The checked reader: an error of the group's coordinator raises (the gauges keep their
    # last values) instead of reading as "nothing committed", which would report the whole log
    # as lag. A failed read is tried again at the next interval.
    committed = await committed_offsets(admin, group, tps[0].topic, len(tps), attempts=3)
    earliest: dict[TopicPartition, int] = {}
    missing = [tp for tp in tps if tp.partition not in committed]
    if missing:
        earliest = await offsets.beginning_offsets(missing)
    for tp in tps:
        done = committed[tp.partition] if tp.partition in committed else earliest.get(tp, 0)
        labels = (group, tp.topic, str(tp.partition))
        END_OFFSET.labels(*labels).set(ends[tp])
        COMMITTED_OFFSET.labels(*labels).set(done)
        CONSUMER_LAG.labels(*labels).set(max(ends[tp] - done, 0))
