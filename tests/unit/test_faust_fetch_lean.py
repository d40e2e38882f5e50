"""streams.adapters.faust_fetch.LeanFetcher: aiokafka's per-fetch request building, same result.

The lean ``_get_actions_per_node`` is run beside aiokafka's own (``Fetcher``'s, on the same
fetcher state) for partitions in every state the loop tells apart, and must agree on every
output but the order of a request's partitions, which it keeps (aiokafka shuffles) only
where the order cannot matter. aiokafka's method is pinned: a new aiokafka fails here until
the copy is checked against it."""

from __future__ import annotations

import collections
import hashlib
import inspect
import random
import time
from typing import Any

import aiokafka
import pytest
from aiokafka.cluster import ClusterMetadata
from aiokafka.consumer.fetcher import Fetcher, FetchResult
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.protocol.metadata import MetadataResponse_v0
from aiokafka.structs import TopicPartition

from streams.adapters.faust_fetch import IdleAwareFetcher, LeanFetcher

# sha256 of aiokafka 0.14.0's Fetcher._get_actions_per_node source, which LeanFetcher copies.
PINNED = "1dab2cf937d165d0eeacc8da8ed2b0ebd80b321bb6583757e01cdc1013d31635"


def test_the_copied_aiokafka_method_is_unchanged() -> None:
    assert aiokafka.__version__ == "0.14.0"
    source = inspect.getsource(Fetcher._get_actions_per_node)
    assert hashlib.sha256(source.encode()).hexdigest() == PINNED, (
        "aiokafka's Fetcher._get_actions_per_node changed: compare LeanFetcher's copy with it"
    )


def test_background_groups_fetchers_are_lean_too() -> None:
    assert issubclass(IdleAwareFetcher, LeanFetcher)


class _Cluster:
    """aiokafka's ``ClusterMetadata`` as the fetcher reads it; ``_partitions`` is the table an
    update replaces whole (``update`` here)."""

    def __init__(self, leaders: dict[TopicPartition, int | None], brokers: set[int]) -> None:
        self.leaders = leaders
        self.brokers = brokers
        self._partitions: dict[str, Any] = {}
        self.lookups = 0

    def update(self, leaders: dict[TopicPartition, int | None]) -> None:
        self.leaders = leaders
        self._partitions = {}

    def leader_for_partition(self, tp: TopicPartition) -> int | None:
        self.lookups += 1
        return self.leaders.get(tp)

    def broker_metadata(self, node_id: int) -> object | None:
        return object() if node_id in self.brokers else None


class _Client:
    def __init__(self, cluster: _Cluster) -> None:
        self.cluster = cluster


def _fetcher(cluster: _Cluster, *, max_bytes: int = 52428800, per_partition: int = 1048576) -> LeanFetcher:
    f = LeanFetcher.__new__(LeanFetcher)  # no client connection, no fetch task: only the building
    f._client = _Client(cluster)
    f._records = collections.OrderedDict()
    f._in_flight = set()
    f._preferred_read_replica = {}
    f._fetch_min_bytes = 1
    f._fetch_max_wait_ms = 1500
    f._fetch_max_bytes = max_bytes
    f._max_partition_fetch_bytes = per_partition
    f._isolation_level = 0
    f._client_rack = None
    f._fetcher_timeout = 0.2
    return f


def _both(fetcher: LeanFetcher, assignment: Any) -> tuple[Any, Any]:
    random.seed(7)
    ours = fetcher._get_actions_per_node(assignment)
    random.seed(7)
    theirs = Fetcher._get_actions_per_node(fetcher, assignment)
    return ours, theirs


def _requests(fetch_requests: list[Any]) -> dict[int, tuple[Any, ...]]:
    """node -> the request's parameters and its partitions as a set (order left out)."""
    out = {}
    for node_id, req in fetch_requests:
        parts = {(topic, p) for topic, partitions in req.topics for p in partitions}
        params = (req._max_wait_ms, req._min_bytes, req._max_bytes, req._isolation_level, req._rack_id)
        out[node_id] = (*params, parts)
    return out


def _same(ours: Any, theirs: Any) -> None:
    assert _requests(ours[0]) == _requests(theirs[0])
    assert dict(ours[1]) == dict(theirs[1])
    assert ours[2] == pytest.approx(theirs[2], abs=0.01)
    assert ours[3] == theirs[3]
    assert ours[4] == theirs[4]


@pytest.mark.asyncio
async def test_every_partition_state_gives_aiokafkas_result() -> None:
    t = [TopicPartition("events", p) for p in range(12)] + [TopicPartition("keys", p) for p in range(4)]
    leaders: dict[TopicPartition, int | None] = {tp: 1 for tp in t}
    leaders.update({t[1]: 2, t[2]: None, t[3]: -1, t[5]: 3, t[6]: 3, t[7]: 4, t[8]: 5, t[9]: 5, t[10]: 6})
    subs = SubscriptionState()
    subs.assign_from_user(set(t))
    assignment = subs.subscription.assignment
    for i, tp in enumerate(t):
        assignment.state_value(tp).reset_to(100 + i)
    assignment.state_value(t[9]).await_reset(0)  # node 5: waits for its reset, no fetch
    subs.pause(t[4])  # paused: its resume future is waited on
    subs.pause(t[12])
    cluster = _Cluster(leaders, {1, 2, 3, 4, 5, 6})
    fetcher = _fetcher(cluster)
    # node 3: records of t[5] not consumed yet (backoff), so t[6] is not fetched either
    fetcher._records[t[5]] = FetchResult(t[5], assignment=assignment, partition_records=None, backoff=0.1)
    # t[11]: consumed long ago (backoff over): neither fetched nor backing off
    fetcher._records[t[11]] = FetchResult(t[11], assignment=assignment, partition_records=None, backoff=0.0)
    fetcher._in_flight.add(4)  # node 4 has a request in flight
    ours, theirs = _both(fetcher, assignment)
    _same(ours, theirs)
    # and what that is, so that the comparison cannot pass on two empty results
    assert set(_requests(ours[0])) == {1, 2, 6}
    assert dict(ours[1]) == {5: [t[9]]}
    assert ours[2] == pytest.approx(0.1, abs=0.01)
    assert ours[3] is True  # t[2], t[3]: no leader
    assert len(ours[4]) == 2

    # a preferred read replica (KIP-392) cached for t[0]: both route it through the cache
    fetcher._preferred_read_replica[t[0]] = (2, time.monotonic() + 60)
    ours, theirs = _both(fetcher, assignment)
    _same(ours, theirs)
    assert ("events", (0, 100, 1048576)) in _requests(ours[0])[2][5]

    # nothing to back off: the routine's own timeout
    fetcher._records.clear()
    fetcher._preferred_read_replica.clear()
    ours, theirs = _both(fetcher, assignment)
    _same(ours, theirs)
    assert ours[2] == theirs[2] == 0.2


@pytest.mark.asyncio
async def test_partitions_are_shuffled_only_when_a_response_cannot_hold_them_all() -> None:
    t = [TopicPartition("events", p) for p in range(36)]
    subs = SubscriptionState()
    subs.assign_from_user(set(t))
    assignment = subs.subscription.assignment
    for i, tp in enumerate(t):
        assignment.state_value(tp).reset_to(i)
    cluster = _Cluster(dict.fromkeys(t, 1), {1})
    in_order = [tp.partition for tp in assignment.tps]

    def order(fetcher: LeanFetcher) -> list[int]:
        ((_, req),) = fetcher._get_actions_per_node(assignment)[0]
        return [p for _, partitions in req.topics for p, _, _ in partitions]

    roomy = _fetcher(cluster)  # 36 x 1 MiB <= 50 MiB: every partition gets its share
    assert [order(roomy) for _ in range(5)] == [in_order] * 5
    tight = _fetcher(cluster, max_bytes=8 * 1048576)  # 36 MiB asked of an 8 MiB response
    random.seed(3)
    orders = [order(tight) for _ in range(5)]
    assert all(sorted(o) == sorted(in_order) for o in orders)
    assert any(o != in_order for o in orders)


def _assigned(tps: list[TopicPartition]) -> tuple[SubscriptionState, Any]:
    subs = SubscriptionState()
    subs.assign_from_user(set(tps))
    assignment = subs.subscription.assignment
    for i, tp in enumerate(tps):
        assignment.state_value(tp).reset_to(i)
    return subs, assignment


@pytest.mark.asyncio
async def test_leaders_are_looked_up_again_only_after_a_metadata_update_or_a_new_assignment() -> None:
    t = [TopicPartition("events", p) for p in range(12)]
    subs, assignment = _assigned(t)
    cluster = _Cluster(dict.fromkeys(t, 1), {1, 2})
    fetcher = _fetcher(cluster)
    _same(*_both(fetcher, assignment))
    looked_up = cluster.lookups
    for _ in range(3):
        fetcher._get_actions_per_node(assignment)
    assert cluster.lookups == looked_up  # the plan kept

    # a leader moves (metadata update: a new table): both fetch t[3] from node 2 now
    cluster.update({**dict.fromkeys(t, 1), t[3]: 2})
    ours, theirs = _both(fetcher, assignment)
    _same(ours, theirs)
    assert _requests(ours[0])[2][5] == {("events", (3, 3, 1048576))}

    # a rebalance: a new assignment of other partitions, the same table
    subs.assign_from_user(set(t[6:]))
    moved = subs.subscription.assignment
    for i, tp in enumerate(t[6:]):
        moved.state_value(tp).reset_to(50 + i)
    ours, theirs = _both(fetcher, moved)
    _same(ours, theirs)
    assert _requests(ours[0])[1][5] == {("events", (p, 44 + p, 1048576)) for p in range(6, 12)}


def test_aiokafka_replaces_the_partition_table_on_every_metadata_update() -> None:
    """What the plan's check relies on: a new table object per update, never one changed in place."""
    cluster = ClusterMetadata()

    def update(leader: int) -> None:
        cluster.update_metadata(
            MetadataResponse_v0(
                [(1, "localhost", 9092), (2, "localhost", 9093)],
                [(0, "events", [(0, 0, leader, [leader], [leader])])],
            )
        )

    update(1)
    before = cluster._partitions
    assert cluster.leader_for_partition(TopicPartition("events", 0)) == 1
    update(2)
    assert cluster._partitions is not before
    assert before["events"][0].leader == 1  # the old table untouched
    assert cluster.leader_for_partition(TopicPartition("events", 0)) == 2
