"""``committed_offsets``: what ``tidings archive trim-log`` reads of each consumer group. An
error of the coordinator must never read as "no offsets", or the trim would pass a group that
is behind (aiokafka's own ``list_consumer_group_offsets`` drops the response's top-level error)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import CoordinatorLoadInProgressError, GroupAuthorizationFailedError

from tidings.archive_ops import committed_offsets

TOPIC = "t.conversation-events"
LOADING, DENIED = CoordinatorLoadInProgressError.errno, GroupAuthorizationFailedError.errno


class _Admin:
    """Answers each OffsetFetch with the next of ``responses``."""

    def __init__(self, *responses: Any) -> None:
        self.responses = list(responses)
        self.asked = 0

    async def find_coordinator(self, group: str) -> int:
        return 1

    async def _send_request(self, request: Any, node: int) -> Any:
        self.asked += 1
        return self.responses.pop(0)


def _offsets(**by_partition: int) -> Any:
    parts = [(int(p[1:]), offset, "", 0) for p, offset in by_partition.items()]
    return SimpleNamespace(error_code=0, topics=[(TOPIC, parts)])


def _top_level(error: int) -> Any:
    return SimpleNamespace(error_code=error, topics=[])


async def test_offsets_of_the_topic_without_the_partitions_never_committed() -> None:
    admin = _Admin(_offsets(p0=5, p1=-1, p2=40))
    assert await committed_offsets(admin, "g", TOPIC, 3) == {0: 5, 2: 40}


async def test_a_loading_coordinator_is_asked_again_not_read_as_no_offsets() -> None:
    admin = _Admin(_top_level(LOADING), _top_level(LOADING), _offsets(p0=5))
    assert await committed_offsets(admin, "g", TOPIC, 1) == {0: 5}
    assert admin.asked == 3


async def test_an_error_that_stays_is_raised() -> None:
    with pytest.raises(CoordinatorLoadInProgressError):
        await committed_offsets(_Admin(*[_top_level(LOADING)] * 3), "g", TOPIC, 1, attempts=3)
    with pytest.raises(GroupAuthorizationFailedError):
        await committed_offsets(_Admin(_top_level(DENIED)), "g", TOPIC, 1)
    partition_error = SimpleNamespace(error_code=0, topics=[(TOPIC, [(0, -1, "", DENIED)])])
    with pytest.raises(GroupAuthorizationFailedError):
        await committed_offsets(_Admin(partition_error), "g", TOPIC, 1)
