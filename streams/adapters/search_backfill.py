"""Reads a range of one partition of the conversation log, for a search shard that is behind
its consumer group (``projections.adapters.search.Backfill``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator

from aiokafka import AIOKafkaConsumer, TopicPartition

from events import ChatEvent, decode_event
from events.errors import Unavailable

log = logging.getLogger(__name__)


class KafkaBackfill:
    def __init__(self, bootstrap: str, topic: str, *, chunk: int = 5_000) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._chunk = chunk

    async def read(
        self, partition: int, start: int, end: int
    ) -> AsyncGenerator[list[tuple[int, ChatEvent]], None]:
        """The events of ``partition`` from ``start`` up to ``end`` (exclusive), in lists of
        about ``chunk``: a shard rebuilt from offset 0 may need the whole partition."""
        tp = TopicPartition(self._topic, partition)
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
        try:
            await consumer.start()
            consumer.assign([tp])
            first = (await consumer.beginning_offsets([tp]))[tp]
            if first > start:
                # Retention deleted them; `tidings replay --projection search` reads the archive.
                log.error("search backfill: offsets %s..%s of partition %s are gone", start, first, partition)
            consumer.seek(tp, max(start, first))
            out: list[tuple[int, ChatEvent]] = []
            while max(start, first) < end and (await consumer.position(tp)) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for record in batch.get(tp, []):
                    if record.offset >= end:
                        break
                    try:
                        out.append((record.offset, decode_event(record.value)))
                    except ValueError:
                        # The main agent dead-letters it; the shard just skips it.
                        log.warning("search backfill: undecodable event at %s:%s", partition, record.offset)
                if len(out) >= self._chunk:
                    yield out
                    out = []
            if out:
                yield out
        except Unavailable:
            raise
        except Exception as exc:
            raise Unavailable(f"search backfill of partition {partition}: {exc!r}") from exc
        finally:
            await consumer.stop()
