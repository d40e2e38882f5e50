"""The receipt command over the in-memory log, directory and receipts read model (the read
model's contract: ``tests/contracts.py``): a receipt that would not move its watermark appends
nothing, and the read model the event reaches never moves back either."""

from __future__ import annotations

import itertools
import time
from typing import Literal

import pytest

from commands.memory import MemoryDirectory, MemoryEventLog
from commands.receipts import MAX_FUTURE_MS, RecordReceipt, record_receipt
from events import ReceiptRecorded
from events.errors import Forbidden, Invalid
from events.ids import Snowflake
from projections.memory import MemoryReceipts

CID = "dm:alice:bob"


def _ids(n: int) -> list[int]:
    now = time.time_ns() // 1_000_000
    return [Snowflake(1, clock=itertools.repeat(now - 10_000 + i).__next__).next_id() for i in range(n)]


def _receipt(
    message_id: int, status: Literal["delivered", "read"] = "read", user_id: str = "bob"
) -> RecordReceipt:
    return RecordReceipt(
        user_id=user_id, device_id="d", conversation_id=CID, message_id=message_id, status=status
    )


async def _record(cmd: RecordReceipt, log: MemoryEventLog, receipts: MemoryReceipts) -> bool:
    """Run the command; the worker applies what it appended. Whether it appended."""
    event = await record_receipt(cmd, log=log, directory=MemoryDirectory(), watermarks=receipts)
    if event is not None:
        await receipts.apply([event])
    return event is not None


async def test_a_receipt_that_would_not_move_its_watermark_appends_nothing() -> None:
    log, receipts = MemoryEventLog(), MemoryReceipts()
    m1, m2, m3 = _ids(3)
    assert await _record(_receipt(m2, "delivered"), log, receipts)
    assert not await _record(_receipt(m1, "delivered"), log, receipts)  # backwards
    assert not await _record(_receipt(m2, "delivered"), log, receipts)  # again
    assert await _record(_receipt(m1, "read"), log, receipts)  # read has its own watermark
    assert not await _record(_receipt(m1, "read"), log, receipts)
    assert await _record(_receipt(m3, "read"), log, receipts)
    assert not await _record(_receipt(m3, "delivered"), log, receipts)  # read implied it
    recorded = [(e.message_id, e.status) for e in log.events if isinstance(e, ReceiptRecorded)]
    assert recorded == [(m2, "delivered"), (m1, "read"), (m3, "read")] and len(log.events) == 3
    assert await receipts.watermarks(CID, "bob") == (m3, m3)


async def test_strangers_and_impossible_ids_are_refused() -> None:
    log, receipts = MemoryEventLog(), MemoryReceipts()
    [m1] = _ids(1)
    with pytest.raises(Forbidden):
        await _record(_receipt(m1, user_id="carol"), log, receipts)
    future = Snowflake(1, clock=lambda: time.time_ns() // 1_000_000 + MAX_FUTURE_MS + 60_000).next_id()
    with pytest.raises(Invalid):
        await _record(_receipt(future), log, receipts)
    with pytest.raises(Invalid):
        await _record(_receipt(0), log, receipts)
    assert log.events == []
