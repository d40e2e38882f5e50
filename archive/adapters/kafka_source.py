"""The event log as a source for the archive job and replay: plain aiokafka consumption of
assigned partitions (no consumer group, nothing committed), between offsets given by the
caller."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, TopicPartition

from archive.tables import LogEntry


class KafkaLogSource:
    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self._topic = topic
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_wait_ms=100,
            # Only what producers committed (the gateway's producer is idempotent, not
            # transactional, so this is everything).
            isolation_level="read_committed",
        )

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.assign(self._tps)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def __aenter__(self) -> KafkaLogSource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def end_offsets(self) -> dict[int, int]:
        ends = await self._consumer.end_offsets(self._tps)
        return {tp.partition: int(o) for tp, o in ends.items()}

    async def beginning_offsets(self) -> dict[int, int]:
        starts = await self._consumer.beginning_offsets(self._tps)
        return {tp.partition: int(o) for tp, o in starts.items()}

    async def read(self, starts: dict[int, int], ends: dict[int, int]) -> AsyncIterator[list[LogEntry]]:
        consumer = self._consumer
        active = {self._tps[p] for p in starts if starts[p] < ends[p]}
        consumer.pause(*self._tps)
        for tp in active:
            consumer.seek(tp, starts[tp.partition])
        consumer.resume(*active)
        while active:
            batches = await consumer.getmany(*active, timeout_ms=500, max_records=20_000)
            out: list[LogEntry] = []
            for tp, records in batches.items():
                end = ends[tp.partition]
                out += [r for r in records if r.offset < end and r.value is not None]
            if out:
                yield out
            for tp in list(active):
                if await consumer.position(tp) >= ends[tp.partition]:
                    active.discard(tp)
                    consumer.pause(tp)
