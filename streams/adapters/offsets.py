"""Consumer-group offsets read from Kafka with every error checked.

aiokafka's ``AIOKafkaAdminClient.list_consumer_group_offsets`` reads no top-level error of the
OffsetFetch response (v2+: a coordinator that is loading or has moved answers with no
partitions and that error), so an error reads as "this group committed nothing". The lag
exporter would then report the whole log as lag, and ``tidings archive trim-log`` would pass a
group that is behind. Everything that reads committed offsets uses ``committed_offsets``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import for_code
from aiokafka.protocol.commit import OffsetFetchRequest


async def committed_offsets(
    admin: Any, group: str, topic: str, partitions: int, attempts: int = 10
) -> dict[int, int]:
    """``group``'s committed offsets of ``topic`` (partition -> offset; a partition the group
    never committed is left out), or an error; never an empty answer for an error. ``admin``
    is a started ``AIOKafkaAdminClient``. Retriable errors are tried ``attempts`` times."""
    request = OffsetFetchRequest(group, [(topic, list(range(partitions)))])
    attempt = 0
    while True:
        coordinator = await admin.find_coordinator(group)
        response = await admin._send_request(request, coordinator)
        codes = [getattr(response, "error_code", 0)]
        codes += [error for _, parts in response.topics for _, _, _, error in parts]
        error = next((code for code in codes if code), 0)
        if not error:
            return {
                partition: offset
                for name, parts in response.topics
                if name == topic
                for partition, offset, _, _ in parts
                if offset >= 0
            }
        attempt += 1
        failure = for_code(error)(f"committed offsets of consumer group {group}")
        if not failure.retriable or attempt >= attempts:
            raise failure
        await asyncio.sleep(0.5)
