"""``sync_since`` over an in-memory log: whatever the page size and however events spread over
partitions and conversations, paging from a cursor returns every event once, in log order per
conversation, and never past the applied watermark."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from events import MessageSent
from projections.memory import MemorySyncLog
from projections.sync import SyncContext, encode_cursor, sync_since
from tests.factories import message_sent

PARTITIONS = 4


class MemoryLog(MemorySyncLog):
    """The in-memory sync log (its contract: ``tests/contracts.py``), with conversations
    written before the heads table existed, and a note of whose log was read."""

    def __init__(self) -> None:
        super().__init__()
        self.headless: set[str] = set()  # conversations written before the heads table
        self.read: list[str] = []  # conversations whose log was read, in order

    async def heads(self, conversation_ids: Sequence[str]) -> dict[str, int]:
        heads = await super().heads(conversation_ids)
        return {c: h for c, h in heads.items() if c not in self.headless}

    async def between(self, conversation_id: str, low: int, high: int, limit: int) -> list[tuple[int, bytes]]:
        self.read.append(conversation_id)
        return await super().between(conversation_id, low, high, limit)


class MemoryCold:
    """The archive: events moved out of the log below a per-partition horizon."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[int, bytes]]] = {}
        self.horizons: list[dict[int, int]] = [{}]  # successive answers of pruned_below

    def pruned_below(self) -> dict[int, int]:
        return self.horizons.pop(0) if len(self.horizons) > 1 else self.horizons[0]

    async def between(
        self, cid: str, partition: int, low: int, high: int, limit: int
    ) -> list[tuple[int, bytes]]:
        assert _partition_of(cid) == partition
        return [e for e in self.events.get(cid, []) if low < e[0] <= high][:limit]

    def prune(self, log: MemoryLog, horizon: dict[int, int]) -> None:
        for cid, rows in log.events.items():
            below = horizon.get(_partition_of(cid), 0)
            self.events.setdefault(cid, []).extend(e for e in rows.items() if e[0] < below)
            self.events[cid].sort()
            log.events[cid] = {o: e for o, e in rows.items() if o >= below}


def _partition_of(cid: str) -> int:
    return int(cid.rsplit("-", 1)[1]) % PARTITIONS


def _ctx(log: MemoryLog, cids: set[str], cold: MemoryCold | None = None) -> SyncContext:
    async def conversation_ids(user_id: str) -> set[str]:
        return set(cids)

    async def describe(user_id: str, cid: str) -> dict[str, Any] | None:
        return None

    async def group_row(cid: str) -> Any:
        return None

    return SyncContext(
        log=log,
        partitions=PARTITIONS,
        partition_of=_partition_of,
        conversation_ids=conversation_ids,
        describe=describe,
        group_row=group_row,
        fanout_threshold=500,
        cold=cold,
    )


def _message(cid: str, n: int) -> MessageSent:
    return message_sent(n, conversation_id=cid, sender_id="s", client_msg_id=str(n), body="", ts=0)


@pytest.mark.parametrize("seed", range(20))
async def test_paging_returns_every_event_once_in_order_and_stops_at_the_watermark(seed: int) -> None:
    rng = random.Random(seed)
    cids = {f"c-{i}" for i in range(rng.randint(1, 9))}
    log = MemoryLog()
    next_offset = dict.fromkeys(range(PARTITIONS), 0)
    written: dict[str, list[int]] = {c: [] for c in cids}
    ids = rng.sample(range(1, 10**9), 300)  # unique, and not in log order (late appends)
    id_at: dict[tuple[str, int], int] = {}
    for n in range(rng.randint(0, 300)):
        cid = rng.choice(sorted(cids))
        p = _partition_of(cid)
        offset = next_offset[p] + rng.randint(1, 3)  # other users' conversations in between
        next_offset[p] = offset
        await log.apply_at([(p, offset, _message(cid, ids[n]))])
        id_at[(cid, offset)] = ids[n]
        written[cid].append(offset)
    log.headless = {c for c in cids if rng.random() < 0.3}
    # the worker has written all of it and moved its watermarks past only part of it
    log.marks = {p: rng.randint(0, o) for p, o in next_offset.items()}
    # and the oldest part of it may be archived and pruned from the log
    cold = None
    if rng.random() < 0.5:
        cold = MemoryCold()
        cold.horizons = [{p: rng.randint(0, m + 1) for p, m in log.marks.items()}]
        cold.prune(log, cold.horizons[0])
    visible = {c: [o for o in offs if o <= log.marks[_partition_of(c)]] for c, offs in written.items()}

    start = rng.choice([{}, {p: rng.randint(0, m) for p, m in log.marks.items()}])
    expected = {c: [o for o in offs if o > start.get(_partition_of(c), -1)] for c, offs in visible.items()}
    cursor, pages, got = encode_cursor(start), 0, []
    limit = rng.randint(1, 40)
    while True:
        page = await sync_since("me", cursor, limit=limit, ctx=_ctx(log, cids, cold))
        assert len(page.messages) <= limit
        for cid in cids:  # a page lists each conversation's messages by ascending id
            mine = [int(m["message_id"]) for m in page.messages if m["conversation_id"] == cid]
            assert mine == sorted(mine)
        got += page.messages
        cursor, pages = page.cursor, pages + 1
        assert pages < 1000
        if not page.has_more:
            break
    want = sorted(id_at[(c, o)] for c, offs in expected.items() for o in offs)
    assert sorted(int(m["message_id"]) for m in got) == want  # each once, none beyond the watermark
    # nothing more once caught up
    again = await sync_since("me", cursor, limit=limit, ctx=_ctx(log, cids, cold))
    assert again.messages == [] and not again.has_more and again.cursor == cursor


async def test_only_conversations_with_events_past_the_cursor_are_read() -> None:
    log = MemoryLog()
    cids = {f"c-{i}" for i in range(8)}  # two conversations per partition
    for i, cid in enumerate(sorted(cids)):
        await log.apply_at([(_partition_of(cid), 10 + i, _message(cid, 100 + i))])
    await log.apply_at([(_partition_of("c-5"), 50, _message("c-5", 500))])  # the only one with news
    log.headless = {"c-6"}  # written before heads existed: read to be sure
    log.marks = dict.fromkeys(range(PARTITIONS), 60)
    cursor = encode_cursor(dict.fromkeys(range(PARTITIONS), 30))

    page = await sync_since("me", cursor, limit=100, ctx=_ctx(log, cids))

    assert [m["message_id"] for m in page.messages] == ["500"]
    assert sorted(log.read) == ["c-5", "c-6"]


async def test_a_prune_during_the_read_is_read_again_from_the_archive() -> None:
    log, cold = MemoryLog(), MemoryCold()
    cid = "c-1"
    await log.apply_at([(_partition_of(cid), o, _message(cid, o)) for o in range(10, 20)])
    log.marks = dict.fromkeys(range(PARTITIONS), 30)
    # The first read sees no prune; a prune up to 15 lands before the check after it.
    cold.horizons = [{}, {1: 15}, {1: 15}]
    real_between = log.between

    async def between(cid: str, low: int, high: int, limit: int) -> list[tuple[int, bytes]]:
        rows = await real_between(cid, low, high, limit)
        if not cold.events:
            cold.prune(log, {1: 15})  # the prune removed rows right after this read
            return rows[5:]  # ... and this read missed them
        return rows

    log.between = between  # type: ignore[method-assign,assignment]
    page = await sync_since("me", encode_cursor({}), limit=100, ctx=_ctx(log, {cid}, cold))
    assert [int(m["message_id"]) for m in page.messages] == list(range(10, 20))
