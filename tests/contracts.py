"""Contract tests run against both the in-memory fakes (unit tier) and the real adapters
(integration tier): the fakes are only worth having if they behave like the real thing."""

from __future__ import annotations

import asyncio
import itertools
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
        at = EPOCH_MS + 400 * DAY_MS + i * step_ms
        out.append(Snowflake(1, clock=itertools.repeat(at).__next__).next_id())
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


class DirectoryContract:
    """``directory`` fixture: an empty membership read model, as the write side sees it
    (``commands.ports.Directory``)."""

    @staticmethod
    def _group(events: int = 6) -> tuple[str, list[int]]:
        from commands.groups import group_id

        ids = spread_ids(events, step_ms=1)
        return group_id(ids[0]) + uuid.uuid4().hex[:6], ids

    @staticmethod
    def _lifecycle(cid: str, ids: list[int]) -> list[Any]:
        from events import (
            GroupCreated,
            GroupRenamed,
            Member,
            MemberRemoved,
            MemberRoleChanged,
            MembersAdded,
            OwnershipTransferred,
            snowflake_ts,
        )

        def head(i: int) -> dict[str, Any]:
            return {"conversation_id": cid, "event_id": ids[i], "ts": snowflake_ts(ids[i])}

        return [
            GroupCreated(
                **head(0),
                actor_id="o",
                title="first",
                members=(Member(user_id="o", role="owner"), Member(user_id="a", role="member")),
                member_count=2,
            ),
            MembersAdded(
                **head(1),
                actor_id="o",
                members=(Member(user_id="b", role="member"), Member(user_id="c", role="member")),
                member_count=4,
            ),
            MemberRoleChanged(**head(2), actor_id="o", user_id="a", role="admin"),
            MemberRemoved(**head(3), actor_id="o", user_id="c", member_count=3),
            OwnershipTransferred(**head(4), actor_id="o", user_id="b"),
            GroupRenamed(**head(5), actor_id="b", title="second"),
        ]

    @staticmethod
    def _summary(info: Any) -> tuple[str, str, str | None, int] | None:
        if info is None:
            return None
        return (info.conversation_id, info.kind, info.title, info.member_count)

    async def test_a_group_follows_its_events(self, directory: Any) -> None:
        cid, ids = self._group()
        await directory.apply(self._lifecycle(cid, ids))
        assert self._summary(await directory.conversation(cid)) == (cid, "group", "second", 3)
        assert await directory.roles(cid, ["o", "a", "b", "c", "nobody"]) == {
            "o": "admin",
            "a": "admin",
            "b": "owner",
        }
        assert await directory.roles(cid, ["c"]) == {}
        assert await directory.roles(cid, []) == {}

    async def test_events_applied_one_at_a_time_give_the_same_answer(self, directory: Any) -> None:
        cid, ids = self._group()
        for event in self._lifecycle(cid, ids):
            await directory.apply([event])
        assert self._summary(await directory.conversation(cid)) == (cid, "group", "second", 3)
        assert await directory.roles(cid, ["o", "a", "b", "c"]) == {"o": "admin", "a": "admin", "b": "owner"}

    async def test_reapplying_the_log_changes_nothing(self, directory: Any) -> None:
        # The gateway writes through, then the worker applies the same events again (and a
        # restarted worker may apply a whole batch a third time).
        cid, ids = self._group()
        events = self._lifecycle(cid, ids)
        await directory.apply(events)
        await directory.apply(events)
        await directory.apply(events[:2])
        assert self._summary(await directory.conversation(cid)) == (cid, "group", "second", 3)
        assert await directory.roles(cid, ["o", "a", "b", "c"]) == {"o": "admin", "a": "admin", "b": "owner"}

    async def test_unknown_groups_and_direct_chats_have_no_row(self, directory: Any) -> None:
        from events import DirectOpened, snowflake_ts

        cid, [mid] = self._group(1)
        assert await directory.conversation(cid) is None
        assert await directory.roles(cid, ["o"]) == {}
        dm = f"dm:alice:u{uuid.uuid4().hex[:10]}"
        opened = DirectOpened(
            conversation_id=dm, event_id=mid, actor_id="alice", ts=snowflake_ts(mid), user_id="alice"
        )
        await directory.apply([opened])
        assert await directory.conversation(dm) is None


class LocksContract:
    """``locks`` fixture: ``commands.ports.Locks``."""

    async def test_holders_of_one_name_take_turns(self, locks: Any) -> None:
        name = f"l{uuid.uuid4().hex[:10]}"
        inside: list[int] = []
        overlaps = 0

        async def hold(i: int) -> None:
            nonlocal overlaps
            async with locks.hold(name):
                inside.append(i)
                overlaps += len(inside) > 1
                await asyncio.sleep(0.01)  # the read-decide-append a lock protects
                inside.remove(i)

        await asyncio.wait_for(asyncio.gather(*(hold(i) for i in range(6))), timeout=10)
        assert overlaps == 0

    async def test_other_names_do_not_wait(self, locks: Any) -> None:
        name = f"l{uuid.uuid4().hex[:10]}"

        async def other() -> None:
            async with locks.hold(f"{name}-other"):
                pass

        async with locks.hold(name):
            await asyncio.wait_for(other(), timeout=2)

    async def test_released_on_error_and_free_again(self, locks: Any) -> None:
        name = f"l{uuid.uuid4().hex[:10]}"
        with pytest.raises(KeyError):
            async with locks.hold(name):
                raise KeyError(name)
        async with asyncio.timeout(2), locks.hold(name):
            pass


class RateLimiterContract:
    """``limiter`` fixture: a factory ``(limits) -> RateLimiter`` on an empty store."""

    async def test_a_bucket_gives_its_burst_then_refuses_with_a_retry_after(self, limiter: Any) -> None:
        from events.errors import RateLimited

        limits = limiter({"send": (0.5, 3), "typing": (0.5, 1)})
        user = f"rl{uuid.uuid4().hex[:8]}"
        for _ in range(3):
            await limits.check("send", user)
        with pytest.raises(RateLimited) as refused:
            await limits.check("send", user)
        # one token comes back in 2 s at 0.5 per second
        assert refused.value.retry_after == 2
        # other kinds and other users have buckets of their own
        await limits.check("typing", user)
        await limits.check("send", f"{user}x")

    async def test_tokens_come_back_at_the_rate(self, limiter: Any) -> None:
        from events.errors import RateLimited

        limits = limiter({"send": (2.0, 1)})
        user = f"rl{uuid.uuid4().hex[:8]}"
        await limits.check("send", user)
        with pytest.raises(RateLimited) as refused:
            await limits.check("send", user)
        assert refused.value.retry_after == 1  # 500 ms, rounded up to whole seconds
        await asyncio.sleep(1.2)  # the refill under test: over 2 tokens' worth, capped at the burst of 1
        await limits.check("send", user)
        with pytest.raises(RateLimited):
            await limits.check("send", user)
