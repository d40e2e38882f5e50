"""Contract tests run against both the in-memory fakes (unit tier) and the real adapters
(integration tier): the fakes are only worth having if they behave like the real thing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from commands import SendRecord
from events.ids import EPOCH_MS, Snowflake
from tests.factories import message_sent

DAY_MS = 24 * 3600 * 1000


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
        await store.apply([message_sent(m, conversation_id=cid) for m in reversed(ids)])
        assert ids_of(await store.page(cid, before=None, after=None, limit=7)) == ids[-7:]
        assert ids_of(await store.page(cid, before=ids[10], after=None, limit=4)) == ids[6:10]
        assert ids_of(await store.page(cid, before=ids[2], after=None, limit=10)) == ids[:2]
        assert ids_of(await store.page(cid, before=None, after=ids[3], limit=5)) == ids[4:9]
        assert ids_of(await store.page(cid, before=None, after=ids[-1], limit=5)) == []
        assert ids_of(await store.page(cid, before=None, after=None, limit=100)) == ids

    async def test_apply_is_idempotent_and_returns_protocol_objects(self, store: Any, cid: str) -> None:
        [mid] = spread_ids(1, step_ms=1)
        event = message_sent(mid, conversation_id=cid, body="héllo")
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
        await recent.apply([message_sent(m, conversation_id=cid) for m in ids])
        await recent.apply([message_sent(ids[-1], conversation_id=cid)])  # a redelivery
        assert ids_of(await recent.all(cid)) == ids[-5:]
        assert ids_of(await recent.newest(cid, before=None, limit=2)) == ids[-2:]
        assert ids_of(await recent.newest(cid, before=ids[-2], limit=10)) == ids[-5:-2]


class IdempotencyContract:
    """``idem`` fixture: an empty idempotency store."""

    async def test_claim_then_mark(self, idem: Any) -> None:
        sender = f"u{uuid.uuid4().hex[:10]}"
        first = SendRecord(message_sent(1, conversation_id="dm:a:b"), False)
        assert await idem.claim(sender, "c1", first) is None
        assert (
            await idem.claim(sender, "c1", SendRecord(message_sent(2, conversation_id="dm:a:b"), False))
            == first
        )
        await idem.mark_appended(sender, "c1", SendRecord(first.event, True))
        assert await idem.claim(sender, "c1", first) == SendRecord(first.event, True)
        assert await idem.claim(f"{sender}x", "c1", first) is None

    async def test_concurrent_claims_of_one_key_have_one_winner(self, idem: Any) -> None:
        sender = f"u{uuid.uuid4().hex[:10]}"
        records = [SendRecord(message_sent(i, conversation_id="dm:a:b"), False) for i in range(1, 9)]
        results = await asyncio.gather(*(idem.claim(sender, "same", r) for r in records))
        winners = [r for r, got in zip(records, results, strict=True) if got is None]
        assert len(winners) == 1
        assert all(got == winners[0] for got in results if got is not None)


class KeyStoreContract:
    """``keys`` fixture: a key directory (``commands.keys.KeyStore``). The key commands run on
    it with a fake log, with real keys made by vodozemac."""

    @staticmethod
    def _signed(keys: list[dict[str, str]]) -> list[Any]:
        from events import SignedKey

        return [SignedKey(**k) for k in keys]

    async def _published(self, keys: Any, user: str, device: str, n: int) -> Any:
        from commands.keys import add_one_time_keys, publish_device_keys
        from commands.memory import MemoryEventLog
        from tests.e2ee_support import Device

        owner, log = Device(), MemoryEventLog()
        await publish_device_keys(user, device, **owner.device_keys(), store=keys, log=log)
        owner.uploaded = owner.one_time_keys(n)
        remaining = await add_one_time_keys(
            user, device, self._signed(owner.uploaded), None, store=keys, log=log
        )
        assert remaining == n
        return owner

    async def test_publish_is_idempotent_and_other_keys_conflict(self, keys: Any) -> None:
        from commands.keys import publish_device_keys
        from commands.memory import MemoryEventLog
        from events.errors import Conflict
        from tests.e2ee_support import Device

        user, log, device = f"k{uuid.uuid4().hex[:10]}", MemoryEventLog(), Device()
        assert await publish_device_keys(user, "d1", **device.device_keys(), store=keys, log=log) is not None
        assert await publish_device_keys(user, "d1", **device.device_keys(), store=keys, log=log) is None
        with pytest.raises(Conflict):
            await publish_device_keys(user, "d1", **Device().device_keys(), store=keys, log=log)
        assert len(log.events) == 1
        (listed,) = await keys.devices(user)
        assert (listed.device_id, listed.identity_key) == ("d1", device.identity_key)

    async def test_concurrent_claims_never_hand_a_key_out_twice(self, keys: Any) -> None:
        from commands.keys import claim_keys
        from commands.memory import MemoryEventLog

        user = f"k{uuid.uuid4().hex[:10]}"
        owner = await self._published(keys, user, "d1", 12)
        log = MemoryEventLog()

        async def claim(i: int) -> list[Any]:
            return await claim_keys(f"c{i}/d", [(user, "d1")], store=keys, log=log)

        results = await asyncio.gather(*(claim(i) for i in range(30)))
        handed = [(k.key_id, k.key, k.fallback) for r in results for k in r]
        assert len(handed) == 12 and len(set(handed)) == 12  # 18 claimers got nothing: no fallback
        assert set(handed) == {(k["key_id"], k["key"], False) for k in owner.uploaded}
        assert await keys.remaining(user, "d1") == 0
        assert len(log.events) == 12

    async def test_fallback_when_none_left_and_deletion_clears_everything(self, keys: Any) -> None:
        from commands.keys import add_one_time_keys, claim_keys, delete_device_keys
        from commands.memory import MemoryEventLog
        from events import SignedKey

        user, log = f"k{uuid.uuid4().hex[:10]}", MemoryEventLog()
        owner = await self._published(keys, user, "d1", 1)
        fallback = owner.fallback_key()
        await add_one_time_keys(user, "d1", [], SignedKey(**fallback), store=keys, log=log)
        first = await claim_keys("c/d", [(user, "d1"), (user, "nodevice")], store=keys, log=log)
        assert [(k.device_id, k.fallback) for k in first] == [("d1", False)]
        for _ in range(2):  # the fallback key may repeat
            (again,) = await claim_keys("c/d", [(user, "d1")], store=keys, log=log)
            assert again.fallback and again.key == fallback["key"]
        await delete_device_keys(user, "d1", store=keys, log=log)
        assert await keys.devices(user) == []
        assert await claim_keys("c/d", [(user, "d1")], store=keys, log=log) == []
        assert await keys.remaining(user, "d1") == 0
