"""What the sync log stage writes: each log bucket's row once per process, but again after a
failed write (the projector retries the batch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from events.errors import Unavailable
from projections.sync_log import _LOG_BUCKET, CassandraSyncLog
from tests.factories import message_sent


class FakeCql:
    def __init__(self) -> None:
        self.written: list[tuple[str, Sequence[Any]]] = []
        self.fail_next = False

    async def execute_all(self, statements: Sequence[tuple[str, Sequence[Any]]], **_: Any) -> None:
        if self.fail_next:
            self.fail_next = False
            raise Unavailable("down")
        self.written += statements


def _bucket_rows(cql: FakeCql) -> list[Sequence[Any]]:
    return [params for statement, params in cql.written if statement == _LOG_BUCKET]


async def test_a_bucket_row_is_written_once_and_again_after_a_failure() -> None:
    cql = FakeCql()
    log = CassandraSyncLog(cql)  # type: ignore[arg-type]
    cql.fail_next = True
    with pytest.raises(Unavailable):
        await log.apply_at([(0, 1, message_sent(1, conversation_id="dm:a:b"))])
    await log.apply_at([(0, 1, message_sent(1, conversation_id="dm:a:b"))])  # the retry writes the row
    await log.apply_at(
        [(0, 2, message_sent(2, conversation_id="dm:a:b")), (0, 3, message_sent(3, conversation_id="dm:a:b"))]
    )
    assert _bucket_rows(cql) == [("dm:a:b", 0)]


async def test_combined_writes_leave_out_bucket_rows_once_written_but_not_after_a_failure() -> None:
    """The persist worker's one round (``CombinedWrites``): the sync log's bucket rows go out
    with a conversation's first batch, and again only if that round failed. The messages' bucket
    rows go out with every batch: ``tidings archive prune`` deletes them (their bucket archived),
    and a message may land in that bucket again."""
    from projections.messages import _INSERT_BUCKET, CassandraMessages
    from streams.combined import CombinedWrites

    cql = FakeCql()
    combined = CombinedWrites(
        cql,  # type: ignore[arg-type]
        [CassandraMessages(cql, 3_600_000), CassandraSyncLog(cql)],  # type: ignore[arg-type]
    )
    cql.fail_next = True
    with pytest.raises(Unavailable):
        await combined.apply_at([(0, 1, message_sent(1, conversation_id="dm:a:b"))])
    await combined.apply_at([(0, 1, message_sent(1, conversation_id="dm:a:b"))])  # the retry
    await combined.apply_at(
        [(0, 2, message_sent(2, conversation_id="dm:a:b")), (0, 3, message_sent(3, conversation_id="dm:c:d"))]
    )
    assert _bucket_rows(cql) == [("dm:a:b", 0), ("dm:c:d", 0)]
    message_buckets = [params for statement, params in cql.written if statement == _INSERT_BUCKET]
    assert [p[0] for p in message_buckets] == ["dm:a:b", "dm:a:b", "dm:c:d"]
    # every message and log row is still written, each once
    assert len([s for s, _ in cql.written if "INTO {ks}.messages " in s]) == 3
    assert len([s for s, _ in cql.written if "INTO {ks}.conversation_log " in s]) == 3


class PackingCql(FakeCql):
    def __init__(self) -> None:
        super().__init__()
        self.packing: list[int] = []

    async def execute_all(self, statements: Sequence[tuple[str, Sequence[Any]]], **kwargs: Any) -> None:
        self.packing.append(kwargs.get("partitions_per_batch", 1))
        await super().execute_all(statements)


async def test_the_persist_worker_packs_partitions_as_its_setting_says() -> None:
    """``cassandra_batch_partitions`` reaches the persist worker's round (100 by default, which
    the node's own threshold bounds further in ``Cql.execute_all``; 1 on a cluster whose nodes
    outnumber the replication factor)."""
    from streams.combined import CombinedWrites
    from tidings.settings import Settings

    event = [(0, 1, message_sent(1, conversation_id="dm:a:b"))]
    for setting, expected in ((None, 100), (1, 1)):
        settings = Settings() if setting is None else Settings(cassandra_batch_partitions=setting)
        cql = PackingCql()
        combined = CombinedWrites(
            cql,  # type: ignore[arg-type]
            [CassandraSyncLog(cql)],  # type: ignore[arg-type]
            partitions_per_batch=settings.cassandra_batch_partitions,
        )
        await combined.apply_at(event)
        # the combined round, then the watermarks, packed alike
        assert cql.packing == [expected, expected]
    with pytest.raises(ValueError, match="less than or equal to 1000"):
        Settings(cassandra_batch_partitions=1001)
