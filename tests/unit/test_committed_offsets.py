"""``committed_offsets``: what ``tidings archive trim-log`` reads of each consumer group. An
error of the coordinator must never read as "no offsets", or the trim would pass a group that
is behind (aiokafka's own ``list_consumer_group_offsets`` drops the response's top-level error)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import CoordinatorLoadInProgressError, GroupAuthorizationFailedError

from streams.adapters.offsets import committed_offsets

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


class _Offsets:
    """The consumer the lag exporter reads end and first offsets with."""

    def __init__(self, end: int, start: int) -> None:
        self.end, self.start = end, start

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.end for tp in tps}

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.start for tp in tps}


class _UncheckedAdmin(_Admin):
    """Also answers aiokafka's own reader the way it answers a top-level error: nothing."""

    async def list_consumer_group_offsets(self, group: str, partitions: Any = None) -> dict[Any, Any]:
        return {}


def _gauges(group: str) -> tuple[float | None, float | None]:
    from prometheus_client import REGISTRY

    labels = {"group": group, "topic": TOPIC, "partition": "0"}
    return (
        REGISTRY.get_sample_value("tidings_consumer_lag", labels),
        REGISTRY.get_sample_value("tidings_consumer_committed_offset", labels),
    )


async def test_the_lag_exporter_reads_committed_offsets_checked() -> None:
    """A loading coordinator must not read as "nothing committed" (a lag of the whole log)."""
    from aiokafka import TopicPartition

    from streams.adapters.metrics import _export_once

    tps = [TopicPartition(TOPIC, 0)]
    with pytest.raises(CoordinatorLoadInProgressError):
        await _export_once(_UncheckedAdmin(*[_top_level(LOADING)] * 3), _Offsets(900, 0), "lag-a", tps)  # type: ignore[arg-type]
    assert _gauges("lag-a") == (None, None)

    admin = _UncheckedAdmin(_top_level(LOADING), _offsets(p0=850))
    await _export_once(admin, _Offsets(900, 0), "lag-b", tps)  # type: ignore[arg-type]
    assert _gauges("lag-b") == (50, 850)
    # A partition never committed counts from the log's first offset.
    await _export_once(_UncheckedAdmin(_offsets(p0=-1)), _Offsets(900, 100), "lag-c", tps)  # type: ignore[arg-type]
    assert _gauges("lag-c") == (800, 100)


def test_nothing_reads_offsets_with_the_unchecked_call() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    packages = ("streams", "tidings", "archive", "commands", "projections", "query_api", "bench")
    users = [
        str(path.relative_to(root))
        for package in packages
        for path in (root / package).rglob("*.py")
        if "list_consumer_group_offsets(" in path.read_text()
    ]
    assert users == []
