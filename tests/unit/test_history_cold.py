"""History across three tiers: the archive holds each conversation's oldest messages, whose
warm copies may be pruned; paging either way still walks every message once, in order."""

from __future__ import annotations

from projections.history import history_page
from projections.memory import MemoryMessages, MemoryRecent
from tests.contracts import ids_of, spread_ids
from tests.factories import message_sent

CID = "dm:alice:bob"


async def _three_tiers(
    n: int, archived: int, *, pruned: bool
) -> tuple[list[int], MemoryRecent, MemoryMessages, MemoryMessages]:
    ids = spread_ids(n, step_ms=1000)
    events = [message_sent(m, conversation_id=CID) for m in ids]
    hot, warm, cold = MemoryRecent(size=5), MemoryMessages(), MemoryMessages()
    await hot.apply(events)
    await warm.apply(events[archived:] if pruned else events)
    await cold.apply(events[:archived])
    return ids, hot, warm, cold


async def _back(
    hot: MemoryRecent, warm: MemoryMessages, cold: MemoryMessages | None, limit: int
) -> list[int]:
    seen: list[int] = []
    before = None
    while True:
        page, has_more = await history_page(
            CID, before=before, after=None, limit=limit, hot=hot, warm=warm, cold=cold
        )
        seen = ids_of(page) + seen
        if not has_more:
            return seen
        before = int(page[0]["message_id"])


async def _forward(
    hot: MemoryRecent, warm: MemoryMessages, cold: MemoryMessages, first: int, limit: int
) -> list[int]:
    seen: list[int] = []
    after = first
    has_more = True
    while has_more:
        page, has_more = await history_page(
            CID, before=None, after=after, limit=limit, hot=hot, warm=warm, cold=cold
        )
        seen += ids_of(page)
        after = int(page[-1]["message_id"]) if page else after
    return seen


async def test_paging_back_reaches_the_first_message_after_warm_rows_are_pruned() -> None:
    ids, hot, warm, cold = await _three_tiers(40, 17, pruned=True)
    for limit in (1, 3, 4, 7, 50):
        assert await _back(hot, warm, cold, limit) == ids, limit
    # Without the cold tier the pruned messages are gone: the test can fail.
    assert await _back(hot, warm, None, 4) == ids[17:]


async def test_paging_forward_from_an_archived_message_reaches_the_last() -> None:
    ids, hot, warm, cold = await _three_tiers(40, 17, pruned=True)
    for limit in (1, 4, 7, 50):
        assert await _forward(hot, warm, cold, ids[0], limit) == ids[1:], limit


async def test_archived_but_not_yet_pruned_messages_are_not_doubled() -> None:
    ids, hot, warm, cold = await _three_tiers(30, 20, pruned=False)
    assert await _back(hot, warm, cold, 6) == ids
    assert await _forward(hot, warm, cold, ids[0], 6) == ids[1:]


async def test_everything_archived_and_pruned() -> None:
    ids, _, warm, cold = await _three_tiers(12, 12, pruned=True)
    assert await _back(MemoryRecent(size=5), warm, cold, 5) == ids
