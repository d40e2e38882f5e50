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

    async def execute_all(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
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
