"""``Cql.batches``: how ``execute_all`` groups writes into requests. Statements are prepared
offline (the driver binds them from the column types alone), so this runs without Cassandra;
tests/integration/test_rebuild_equals_incremental.py checks the rows the batches write."""

from __future__ import annotations

import asyncio
from typing import Any

from cassandra.cqltypes import Int32Type, LongType, UTF8Type
from cassandra.protocol import ColumnMetadata, ProtocolVersion
from cassandra.query import BatchStatement, BoundStatement, PreparedStatement

from projections.adapters.cql import Cql, unshadowed

KS = "ks"
# statement -> (table, [(column, type)], indexes of the partition key among the bind markers)
SCHEMA: dict[str, tuple[str, list[tuple[str, Any]], list[int]]] = {
    "INSERT INTO {ks}.messages (cid, bucket, mid, body) VALUES (?, ?, ?, ?)": (
        "messages",
        [("cid", UTF8Type), ("bucket", Int32Type), ("mid", LongType), ("body", UTF8Type)],
        [0, 1],
    ),
    "UPDATE {ks}.receipts USING TIMESTAMP ? SET read = ? WHERE cid = ? AND uid = ?": (
        "receipts",
        [("[timestamp]", LongType), ("read", LongType), ("cid", UTF8Type), ("uid", UTF8Type)],
        [2],
    ),
    "INSERT INTO {ks}.members (cid, uid) VALUES (?, ?)": (
        "members",
        [("cid", UTF8Type), ("uid", UTF8Type)],
        [0],
    ),
    "INSERT INTO {ks}.inbox (uid, cid) VALUES (?, ?)": ("inbox", [("uid", UTF8Type), ("cid", UTF8Type)], [0]),
    "SELECT uid FROM {ks}.members WHERE cid = ?": ("members", [("cid", UTF8Type)], [0]),
    "INSERT INTO {ks}.members (cid, uid) VALUES (?, ?) IF NOT EXISTS": (
        "members",
        [("cid", UTF8Type), ("uid", UTF8Type)],
        [0],
    ),
}
MESSAGE, RECEIPT, MEMBER, INBOX, SELECT, CONDITIONAL = SCHEMA


class _OfflineSession:
    """Prepares from ``SCHEMA`` instead of asking a server."""

    def prepare(self, query: str) -> PreparedStatement:
        template = next(t for t in SCHEMA if t.format(ks=KS) == query)
        table, columns, pk = SCHEMA[template]
        metadata = [ColumnMetadata(KS, table, name, kind) for name, kind in columns]
        return PreparedStatement(metadata, query.encode(), pk, query, KS, ProtocolVersion.V5, None, None)


def _cql() -> Cql:
    return Cql(_OfflineSession(), KS)


def _rows(request: Any) -> list[tuple[Any, ...]]:
    """The bound values of a request, one tuple per statement, as the driver will send them."""
    if isinstance(request, BatchStatement):
        return [tuple(values) for _, _, values in request._statements_and_parameters]
    assert isinstance(request, BoundStatement)
    return [tuple(request.values)]


def _text(value: str) -> bytes:
    return value.encode()


def test_rows_of_one_partition_go_in_one_batch_and_other_partitions_apart() -> None:
    cql = _cql()
    statements = [
        (MESSAGE, ("c1", 7, 1, "a")),
        (MESSAGE, ("c2", 7, 2, "b")),
        (MESSAGE, ("c1", 7, 3, "c")),
        (MESSAGE, ("c1", 8, 4, "d")),  # same conversation, another bucket: another partition
        (MESSAGE, ("c1", 7, 5, "e")),
    ]
    requests = cql.batches(statements)
    rows = sorted(_rows(r) for r in requests)
    assert len(requests) == 3
    by_first_id = {int.from_bytes(r[0][2], "big", signed=True): r for r in rows}
    # c1/7 holds messages 1, 3 and 5 in their given order; c2/7 and c1/8 are requests of their own
    assert [int.from_bytes(v[2], "big", signed=True) for v in by_first_id[1]] == [1, 3, 5]
    assert len(by_first_id[2]) == 1 and len(by_first_id[4]) == 1
    batch = next(r for r in requests if len(_rows(r)) == 3)
    assert isinstance(batch, BatchStatement)
    # routed like the driver routes each of its rows (a composite key: conversation, bucket)
    drivers = cql.prepare(MESSAGE).bind(("c1", 7, 1, "a"))
    assert (
        (batch.routing_key, batch.keyspace)
        == (drivers.routing_key, drivers.keyspace)
        == (
            drivers.routing_key,
            KS,
        )
    )
    assert all(isinstance(r, BoundStatement) for r in requests if len(_rows(r)) == 1)


def test_one_partition_key_in_several_tables_is_one_batch() -> None:
    cql = _cql()
    statements = [
        (MEMBER, ("g1", "u1")),
        (RECEIPT, (1_000, 5, "g1", "u1")),
        (INBOX, ("u1", "g1")),  # partition key u1: another mutation
        (MEMBER, ("g1", "u2")),
    ]
    requests = cql.batches(statements)
    assert len(requests) == 2
    batch = next(r for r in requests if isinstance(r, BatchStatement))
    assert len(batch._statements_and_parameters) == 3
    assert batch.routing_key == _text("g1")  # token-aware: sent to the partition's replica
    assert batch.keyspace == KS
    assert batch.is_idempotent


def test_big_partitions_are_cut_by_count_and_by_size() -> None:
    cql = _cql()
    many = [(MESSAGE, ("c1", 7, i, "x")) for i in range(450)]
    assert [len(_rows(r)) for r in cql.batches(many, max_rows=200)] == [200, 200, 50]
    large = [(MESSAGE, ("c1", 7, i, "y" * 1000)) for i in range(10)]
    sizes = [len(_rows(r)) for r in cql.batches(large, max_rows=200, max_bytes=3500)]
    assert sizes == [3, 3, 3, 1]
    # one statement larger than the limit still goes, alone
    assert [len(_rows(r)) for r in cql.batches([(MESSAGE, ("c1", 7, 1, "z" * 10_000))], max_bytes=100)] == [1]


def test_reads_and_conditional_writes_are_never_batched() -> None:
    cql = _cql()
    statements = [
        (SELECT, ("g1",)),
        (CONDITIONAL, ("g1", "u1")),
        (CONDITIONAL, ("g1", "u2")),
        (MEMBER, ("g1", "u3")),
        (MEMBER, ("g1", "u4")),
    ]
    requests = cql.batches(statements)
    batches = [r for r in requests if isinstance(r, BatchStatement)]
    assert len(batches) == 1 and len(batches[0]._statements_and_parameters) == 2
    singles = [r for r in requests if isinstance(r, BoundStatement)]
    assert sorted(s.prepared_statement.query_string for s in singles) == sorted(
        [SELECT.format(ks=KS), CONDITIONAL.format(ks=KS), CONDITIONAL.format(ks=KS)]
    )


def test_every_statement_is_sent_exactly_once() -> None:
    cql = _cql()
    statements = [(MESSAGE, (f"c{i % 7}", i % 3, i, "b" * (i % 50))) for i in range(1000)]
    rows = [row for r in cql.batches(statements, max_rows=13, max_bytes=400) for row in _rows(r)]
    assert sorted(rows) == sorted(tuple(cql.prepare(MESSAGE).bind(p).values) for _, p in statements)


def test_bind_gives_the_drivers_bytes() -> None:
    cql = _cql()
    cases = [
        (MESSAGE, ("c1", 7, 1 << 62, "ünï\\code")),
        (MESSAGE, ("c1", -3, -5, None)),
        (RECEIPT, (1_700_000_000_000_000, 9, "g1", "u1")),
        (MEMBER, ("g1", "")),
    ]
    for statement, params in cases:
        ours, drivers = cql.bind(statement, params), cql.prepare(statement).bind(params)
        assert (ours.values, ours.routing_key, ours.keyspace) == (
            drivers.values,
            drivers.routing_key,
            drivers.keyspace,
        )
        assert ours.is_idempotent and ours.prepared_statement is drivers.prepared_statement


INBOX_ROW = (
    "UPDATE {ks}.user_conversations USING TIMESTAMP ? SET kind = ?,\n last_message_id = ?"
    " WHERE user_id = ? AND conversation_id = ?"
)
COUNTER = "UPDATE {ks}.stats USING TIMESTAMP ? SET n = n + ? WHERE k = ?"
SET_APPEND = "UPDATE {ks}.tags USING TIMESTAMP ? SET tags = tags + ? WHERE k = ?"
LWT = "UPDATE {ks}.receipts USING TIMESTAMP ? SET read = ? WHERE cid = ? AND uid = ? IF read < ?"
NO_TIMESTAMP = "UPDATE {ks}.receipts SET read = ? WHERE cid = ? AND uid = ?"


def test_an_update_shadowed_by_a_newer_one_of_the_same_row_is_left_out() -> None:
    statements = [
        (RECEIPT, (3, 30, "g1", "u1")),
        (RECEIPT, (5, 50, "g1", "u1")),  # newest of g1/u1
        (RECEIPT, (4, 40, "g1", "u1")),
        (RECEIPT, (1, 10, "g1", "u2")),  # another row
        (RECEIPT, (2, 20, "g2", "u1")),  # another row
        (MESSAGE, ("c1", 7, 1, "a")),  # inserts are kept
        (MESSAGE, ("c1", 7, 1, "a")),
        (INBOX_ROW, (9, "direct", 90, "u1", "c1")),
        (INBOX_ROW, (8, "direct", 80, "u1", "c1")),
    ]
    assert unshadowed(statements) == [
        (RECEIPT, (5, 50, "g1", "u1")),
        (RECEIPT, (1, 10, "g1", "u2")),
        (RECEIPT, (2, 20, "g2", "u1")),
        (MESSAGE, ("c1", 7, 1, "a")),
        (MESSAGE, ("c1", 7, 1, "a")),
        (INBOX_ROW, (9, "direct", 90, "u1", "c1")),
    ]


def test_equal_timestamps_and_other_writes_are_all_kept() -> None:
    # On a tie Cassandra compares values; arithmetic, collections, conditions and server-side
    # timestamps depend on every write.
    for statements in (
        [(RECEIPT, (5, 50, "g1", "u1")), (RECEIPT, (5, 40, "g1", "u1"))],
        [(COUNTER, (1, 1, "k")), (COUNTER, (2, 1, "k"))],
        [(SET_APPEND, (1, {"a"}, "k")), (SET_APPEND, (2, {"b"}, "k"))],
        [(LWT, (1, 1, "g", "u", 1)), (LWT, (2, 2, "g", "u", 2))],
        [(NO_TIMESTAMP, (1, "g", "u")), (NO_TIMESTAMP, (2, "g", "u"))],
    ):
        assert unshadowed(statements) == statements


def test_execute_all_sends_only_the_newest_write_of_a_row() -> None:
    class Recording(_OfflineSession):
        def __init__(self) -> None:
            self.sent: list[Any] = []

        def execute_async(self, request: Any) -> Any:
            self.sent.append(request)
            future: Any = type("Done", (), {"add_callbacks": lambda self, ok, err: ok([])})()
            return future

    session = Recording()
    cql = Cql(session, KS)
    statements = [(RECEIPT, (ts, ts * 10, "g1", "u1")) for ts in (3, 7, 5)] + [(MEMBER, ("g1", "u9"))]
    asyncio.run(cql.execute_all(statements))
    rows = [row for request in session.sent for row in _rows(request)]
    assert sorted(rows) == sorted(
        [
            tuple(cql.prepare(RECEIPT).bind((7, 70, "g1", "u1")).values),
            tuple(cql.prepare(MEMBER).bind(("g1", "u9")).values),
        ]
    )
    assert (cql.statements_sent, cql.statements_shadowed, cql.requests_sent) == (2, 2, 1)


def test_small_groups_of_several_partitions_share_batches_within_the_bounds() -> None:
    from projections.adapters.cql import CELL_BYTES, MIXED_BATCH_BYTES, MIXED_BATCH_PARTITIONS

    cql = _cql()
    # 25 one-row partitions of ~100 bytes: packed 10 partitions at a time (the count bound)
    small: list[tuple[str, tuple[Any, ...]]] = [(INBOX, (f"u{i:02d}", "c" * 100)) for i in range(25)]
    requests = cql.batches(small, partitions_per_batch=MIXED_BATCH_PARTITIONS)
    assert [len(_rows(r)) for r in requests] == [10, 10, 5]
    assert requests[0].routing_key == _text("u00") and requests[1].routing_key == _text("u10")
    assert all(r.keyspace == KS and r.is_idempotent for r in requests)
    # one-row partitions of ~1 KiB: packed by the size bound (values and a cell's overhead each)
    big = [(INBOX, (f"u{i}", "d" * 1000)) for i in range(7)]
    sizes = [len(_rows(r)) for r in cql.batches(big, partitions_per_batch=MIXED_BATCH_PARTITIONS)]
    per_batch = MIXED_BATCH_BYTES // (1002 + 2 * CELL_BYTES)
    assert per_batch == 3 and sizes == [3, 3, 1]
    # a group larger than the mixed bound keeps its own batch; the rest is packed around it
    mixed: list[tuple[str, tuple[Any, ...]]] = [(MESSAGE, ("c1", 7, i, "y" * 1000)) for i in range(4)]
    mixed += small[:3]
    requests = cql.batches(mixed, partitions_per_batch=MIXED_BATCH_PARTITIONS)
    assert sorted(len(_rows(r)) for r in requests) == [3, 4]
    # a partition's rows stay together and in their order, and every row goes once
    rows = [row for r in cql.batches(mixed + small, partitions_per_batch=10) for row in _rows(r)]
    assert sorted(rows) == sorted(tuple(cql.prepare(s).bind(p).values) for s, p in mixed + small)
    # without partitions_per_batch nothing is mixed (the gateway's write-throughs)
    assert len(cql.batches(small)) == 25


def test_the_nodes_batch_thresholds_are_parsed_with_upstreams_as_fallback() -> None:
    from projections.adapters.cql import UPSTREAM_LIMITS, BatchLimits, parse_limits

    tidings_node = {
        "unlogged_batch_across_partitions_warn_threshold": "100",
        "batch_size_warn_threshold": "64KiB",
        "batch_size_fail_threshold": "640KiB",
    }
    assert parse_limits(tidings_node) == BatchLimits(100, 64 * 1024, 640 * 1024)
    assert parse_limits(tidings_node).mixed_bytes == 64 * 1024 * 4 // 5
    upstream = {
        "unlogged_batch_across_partitions_warn_threshold": "10",
        "batch_size_warn_threshold": "5KiB",
        "batch_size_fail_threshold": "50KiB",
    }
    assert parse_limits(upstream) == UPSTREAM_LIMITS == BatchLimits(10, 5120, 51200)
    assert UPSTREAM_LIMITS.mixed_bytes == 4096  # what the client used before it asked the node
    # a node that does not say (ScyllaDB, no system_views), or says what is not understood
    assert parse_limits({}) == UPSTREAM_LIMITS
    assert parse_limits({"unlogged_batch_across_partitions_warn_threshold": "0"}) == UPSTREAM_LIMITS
    assert parse_limits({"batch_size_warn_threshold": "lots"}) == UPSTREAM_LIMITS
    assert parse_limits(
        {"batch_size_warn_threshold": "1MiB", "batch_size_fail_threshold": "1MiB"}
    ) == BatchLimits(10, 1024**2, 1024**2)
    # a refusal closer than the warning bounds the estimate too
    assert BatchLimits(10, 1024**2, 1024**2).mixed_bytes == 1024**2 // 2


def test_a_larger_mixed_bound_packs_a_rounds_partitions_into_one_request() -> None:
    from projections.adapters.cql import CELL_BYTES, _size

    cql = _cql()
    # a 200 msgs/s persist round: ~60 one-row partitions of ~200 bytes
    small: list[tuple[str, tuple[Any, ...]]] = [(INBOX, (f"u{i:02d}", "c" * 200)) for i in range(60)]
    assert len(cql.batches(small, partitions_per_batch=10)) == 6  # upstream's thresholds
    one = cql.batches(small, partitions_per_batch=100, mixed_bytes=52428)
    assert len(one) == 1 and len(_rows(one[0])) == 60
    # the byte bound still cuts: 1 KiB rows, 8 KiB per batch
    big = [(INBOX, (f"u{i}", "d" * 1000)) for i in range(30)]
    requests = cql.batches(big, partitions_per_batch=100, mixed_bytes=8192)
    per_batch = 8192 // (1003 + 2 * CELL_BYTES)
    assert [len(_rows(r)) for r in requests] == [per_batch] * (30 // per_batch) + [30 % per_batch]
    for request in requests:
        prepared = cql.prepare(INBOX)
        assert _size([(prepared, (), list(values)) for values in _rows(request)]) <= 8192
    # the partition bound still cuts
    requests = cql.batches(small, partitions_per_batch=25, mixed_bytes=52428)
    assert [len(_rows(r)) for r in requests] == [25, 25, 10]


class _NodeSession(_OfflineSession):
    """Answers the batch thresholds' read as a node with ``settings`` would, and records the
    write requests; ``refuse`` fails the next write request as Cassandra refuses a large batch."""

    SETTINGS = "SELECT name, value FROM system_views.settings WHERE name IN ?"

    def __init__(self, settings: dict[str, str]) -> None:
        self.settings = settings
        self.reads = 0
        self.sent: list[Any] = []
        self.refuse = False

    def prepare(self, query: str) -> Any:
        if query == self.SETTINGS:
            return type("Prepared", (), {})()
        return super().prepare(query)

    def execute_async(self, request: Any, params: Any = None, **_: Any) -> Any:
        from collections import namedtuple

        from cassandra import InvalidRequest

        if params is not None:  # the settings read
            self.reads += 1
            Row = namedtuple("Row", "name value")
            rows = [Row(name, value) for name, value in self.settings.items() if name in params[0]]
            return type("Done", (), {"add_callbacks": lambda self, ok, err: ok(rows)})()
        self.sent.append(request)
        if self.refuse:
            self.refuse = False
            exc = InvalidRequest('Error from server: code=2200 [Invalid query] message="Batch too large"')
            return type("Failed", (), {"add_callbacks": lambda self, ok, err: err(exc)})()
        return type("Done", (), {"add_callbacks": lambda self, ok, err: ok([])})()


def test_execute_all_keeps_below_the_thresholds_the_node_reports() -> None:
    import pytest
    from cassandra import InvalidRequest

    small: list[tuple[str, tuple[Any, ...]]] = [(INBOX, (f"u{i:02d}", "c" * 200)) for i in range(60)]
    # a node on upstream's thresholds: 10 partitions a batch, whatever the caller allows
    upstream = _NodeSession({"unlogged_batch_across_partitions_warn_threshold": "10"})
    cql = Cql(upstream, KS)
    asyncio.run(cql.execute_all(small, partitions_per_batch=100))
    assert [len(_rows(r)) for r in upstream.sent] == [10] * 6
    # Tidings' node: the round is one request; the thresholds are read once per Cql
    node = _NodeSession(
        {
            "unlogged_batch_across_partitions_warn_threshold": "100",
            "batch_size_warn_threshold": "64KiB",
            "batch_size_fail_threshold": "640KiB",
        }
    )
    cql = Cql(node, KS)
    asyncio.run(cql.execute_all(small, partitions_per_batch=100))
    asyncio.run(cql.execute_all(small, partitions_per_batch=100))
    assert [len(_rows(r)) for r in node.sent] == [60, 60] and node.reads == 1
    assert (cql.requests_sent, cql.single_requests_sent) == (2, 1)
    # the caller's bound is kept below the node's
    node.sent.clear()
    asyncio.run(cql.execute_all(small, partitions_per_batch=20))
    assert [len(_rows(r)) for r in node.sent] == [20, 20, 20]
    # writes that need no packing do not ask the node
    fresh = _NodeSession({})
    asyncio.run(Cql(fresh, KS).execute_all(small[:3]))
    assert fresh.reads == 0 and len(fresh.sent) == 3
    # a batch refused as too large (a node restarted with lower thresholds): the error reaches
    # the caller (which retries event by event), and the next round asks the node again
    node.refuse = True
    node.settings["unlogged_batch_across_partitions_warn_threshold"] = "30"
    with pytest.raises(InvalidRequest):
        asyncio.run(cql.execute_all(small, partitions_per_batch=100))
    node.sent.clear()
    asyncio.run(cql.execute_all(small, partitions_per_batch=100))
    assert node.reads == 2 and [len(_rows(r)) for r in node.sent] == [30, 30]
