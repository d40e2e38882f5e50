"""``Cql.batches``: how ``execute_all`` groups writes into requests. Statements are prepared
offline (the driver binds them from the column types alone), so this runs without Cassandra;
tests/integration/test_rebuild_equals_incremental.py checks the rows the batches write."""

from __future__ import annotations

from typing import Any

from cassandra.cqltypes import Int32Type, LongType, UTF8Type
from cassandra.protocol import ColumnMetadata, ProtocolVersion
from cassandra.query import BatchStatement, BoundStatement, PreparedStatement

from projections.cql import Cql

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
    return Cql(_OfflineSession(), KS)  # type: ignore[arg-type]


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
