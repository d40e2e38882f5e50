"""Contract tests run against both the in-memory fakes (unit tier) and the real adapters
(integration tier): the fakes are only worth having if they behave like the real thing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from commands import SendRecord
from events import MessageSent
from events.ids import EPOCH_MS, Snowflake

DAY_MS = 24 * 3600 * 1000


def message(cid: str, mid: int, body: str | None = None) -> MessageSent:
    from events import snowflake_ts

    return MessageSent(
        conversation_id=cid,
        message_id=mid,
        sender_id="alice",
        sender_device="d",
        client_msg_id=f"c{mid}",
        kind="text",
        body=body or f"m{mid}",
        ts=snowflake_ts(mid),
    )


def spread_ids(n: int, *, step_ms: int) -> list[int]:
    """Ids ``step_ms`` apart, so that with a small bucket size they span many buckets."""
    out = []
    for i in range(n):
        out.append(Snowflake(1, clock=lambda i=i: EPOCH_MS + 400 * DAY_MS + i * step_ms).next_id())
    return out


def ids_of(page: list[dict[str, Any]]) -> list[int]:
    return [int(m["message_id"]) for m in page]


class MessageStoreContract:
    """``store`` fixture: an empty messages read model whose buckets span 1 day."""

    @pytest.fixture
    def cid(self) -> str:
        return f"dm:alice:u{uuid.uuid4().hex[:12]}"

    async def test_pages_walk_buckets_both_ways(self, store: Any, cid: str) -> None:
        ids = spread_ids(30, step_ms=DAY_MS // 3)  # ~10 buckets
        await store.apply([message(cid, m) for m in reversed(ids)])
        assert ids_of(await store.page(cid, before=None, after=None, limit=7)) == ids[-7:]
        assert ids_of(await store.page(cid, before=ids[10], after=None, limit=4)) == ids[6:10]
        assert ids_of(await store.page(cid, before=ids[2], after=None, limit=10)) == ids[:2]
        assert ids_of(await store.page(cid, before=None, after=ids[3], limit=5)) == ids[4:9]
        assert ids_of(await store.page(cid, before=None, after=ids[-1], limit=5)) == []
        assert ids_of(await store.page(cid, before=None, after=None, limit=100)) == ids

    async def test_apply_is_idempotent_and_returns_protocol_objects(self, store: Any, cid: str) -> None:
        [mid] = spread_ids(1, step_ms=1)
        event = message(cid, mid, body="héllo")
        await store.apply([event])
        await store.apply([event])
        [obj] = await store.page(cid, before=None, after=None, limit=10)
        assert obj == {
            "message_id": str(mid),
            "conversation_id": cid,
            "sender_id": "alice",
            "client_msg_id": f"c{mid}",
            "kind": "text",
            "body": "héllo",
            "media": None,
            "ts": event.ts,
        }

    async def test_unknown_conversation_is_empty(self, store: Any, cid: str) -> None:
        assert await store.page(cid, before=None, after=None, limit=10) == []


class RecentContract:
    """``recent`` fixture: a hot cache of size 5 that publishes."""

    @pytest.fixture
    def cid(self) -> str:
        return f"dm:alice:u{uuid.uuid4().hex[:12]}"

    async def test_keeps_the_newest_and_pages(self, recent: Any, cid: str) -> None:
        ids = spread_ids(8, step_ms=1)
        await recent.apply([message(cid, m) for m in ids])
        await recent.apply([message(cid, ids[-1])])  # a redelivery
        assert ids_of(await recent.all(cid)) == ids[-5:]
        assert ids_of(await recent.newest(cid, before=None, limit=2)) == ids[-2:]
        assert ids_of(await recent.newest(cid, before=ids[-2], limit=10)) == ids[-5:-2]


class IdempotencyContract:
    """``idem`` fixture: an empty idempotency store."""

    async def test_claim_then_mark(self, idem: Any) -> None:
        sender = f"u{uuid.uuid4().hex[:10]}"
        first = SendRecord(message("dm:a:b", 1), False)
        assert await idem.claim(sender, "c1", first) is None
        assert await idem.claim(sender, "c1", SendRecord(message("dm:a:b", 2), False)) == first
        await idem.mark_appended(sender, "c1", SendRecord(first.event, True))
        assert await idem.claim(sender, "c1", first) == SendRecord(first.event, True)
        assert await idem.claim(f"{sender}x", "c1", first) is None

    async def test_concurrent_claims_of_one_key_have_one_winner(self, idem: Any) -> None:
        sender = f"u{uuid.uuid4().hex[:10]}"
        records = [SendRecord(message("dm:a:b", i), False) for i in range(1, 9)]
        results = await asyncio.gather(*(idem.claim(sender, "same", r) for r in records))
        winners = [r for r, got in zip(records, results, strict=True) if got is None]
        assert len(winners) == 1
        assert all(got == winners[0] for got in results if got is not None)
