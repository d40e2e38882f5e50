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

    async def test_withdraw_forgets_only_the_claim_it_names(self, idem: Any) -> None:
        """A send refused by its rate limit after its claim withdraws it: a retry is a new
        send. A record written since (the claim of another attempt, a mark) stays."""
        sender = f"u{uuid.uuid4().hex[:10]}"
        refused = SendRecord(message_sent(1, conversation_id="dm:a:b"), False)
        assert await idem.claim(sender, "c1", refused) is None
        await idem.withdraw(sender, "c1", refused)
        retried = SendRecord(message_sent(2, conversation_id="dm:a:b"), False)
        assert await idem.claim(sender, "c1", retried) is None
        await idem.withdraw(sender, "c1", refused)  # not its record: kept
        assert await idem.claim(sender, "c1", refused) == retried
        await idem.mark_appended(sender, "c1", SendRecord(retried.event, True))
        await idem.withdraw(sender, "c1", retried)  # marked since: kept
        assert await idem.claim(sender, "c1", refused) == SendRecord(retried.event, True)

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


class ReceiptStoreContract:
    """``receipts`` fixture: an empty receipts read model (``apply``, and the gateway's
    ``query_api.deps.ReceiptView``: ``watermarks`` and ``page``). Users are fresh ids: a read
    receipt also writes its reader's inbox row in the real store."""

    @pytest.fixture
    def cid(self) -> str:
        return f"dm:alice:u{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def users(self) -> list[str]:
        prefix = f"r{uuid.uuid4().hex[:8]}"
        return [f"{prefix}{i}" for i in range(5)]

    @staticmethod
    def _rows(page: list[Any]) -> list[tuple[str, int, int]]:
        # the real table reads null where a watermark was never written: none, like 0
        return [(r.user_id, r.delivered or 0, r.read or 0) for r in page]

    async def test_watermarks_never_move_back_in_any_order_of_arrival(
        self, receipts: Any, cid: str, users: list[str]
    ) -> None:
        from tests.factories import receipt_recorded

        bob = users[0]
        m1, m2, m3, m4 = spread_ids(4, step_ms=1)
        events = [
            receipt_recorded(m3, conversation_id=cid, user_id=bob, status="delivered"),
            receipt_recorded(m2, conversation_id=cid, user_id=bob, status="read"),
            receipt_recorded(m1, conversation_id=cid, user_id=bob, status="delivered"),
            receipt_recorded(m1, conversation_id=cid, user_id=bob, status="read"),
        ]
        for n, order in enumerate((events, events[::-1], events[1:] + events[:1])):
            other = f"{cid}-{n}"
            await receipts.apply([e.model_copy(update={"conversation_id": other}) for e in order])
            assert await receipts.watermarks(other, bob) == (m3, m2)
        # one at a time, a redelivery included
        for event in [*events, events[0]]:
            await receipts.apply([event])
        assert await receipts.watermarks(cid, bob) == (m3, m2)
        await receipts.apply([receipt_recorded(m4, conversation_id=cid, user_id=bob, status="read")])
        assert await receipts.watermarks(cid, bob) == (m4, m4)  # read implies delivered

    async def test_a_sender_has_read_what_they_send(self, receipts: Any, cid: str, users: list[str]) -> None:
        alice, bob = users[:2]
        m1, m2 = spread_ids(2, step_ms=1)
        await receipts.apply(
            [
                message_sent(m2, conversation_id=cid, sender_id=alice),
                message_sent(m1, conversation_id=cid, sender_id=alice),
            ]
        )
        assert await receipts.watermarks(cid, alice) == (m2, m2)
        assert await receipts.watermarks(cid, bob) == (0, 0)

    async def test_pages_list_each_member_by_user_id(self, receipts: Any, cid: str, users: list[str]) -> None:
        from tests.factories import receipt_recorded

        ids = spread_ids(5, step_ms=1)
        await receipts.apply(
            [
                receipt_recorded(m, conversation_id=cid, user_id=u, status="read" if i % 2 else "delivered")
                for i, (m, u) in enumerate(zip(ids, reversed(users), strict=True))
            ]
        )
        everyone = self._rows(await receipts.page(cid, after="", limit=10))
        assert [u for u, _, _ in everyone] == users
        assert everyone[0] == (users[0], ids[4], 0)  # delivered only
        assert everyone[1] == (users[1], ids[3], ids[3])
        assert self._rows(await receipts.page(cid, after="", limit=2)) == everyone[:2]
        assert self._rows(await receipts.page(cid, after=users[1], limit=2)) == everyone[2:4]
        assert self._rows(await receipts.page(cid, after=users[4], limit=2)) == []
        assert await receipts.page(f"{cid}x", after="", limit=2) == []


class PresenceStoreContract:
    """``presence`` fixture: a ``commands.presence.PresenceStore`` whose connections live
    ``PRESENCE_TTL_MS`` past their last heartbeat; ``clock`` fixture: ``now_ms()`` on the
    store's clock and ``await clock.advance(seconds)`` (real time for the real store)."""

    @staticmethod
    def _user() -> str:
        return f"p{uuid.uuid4().hex[:10]}"

    @staticmethod
    def _states(changes: Any) -> list[str]:
        return [c.state for c in changes]

    async def test_first_connection_is_a_transition_and_heartbeats_are_not(self, presence: Any) -> None:
        from commands.presence import Beat

        alice = self._user()
        assert self._states(await presence.set([Beat(alice, "c1", "online", 0)])) == ["online"]
        for _ in range(3):
            assert await presence.set([Beat(alice, "c1", "online", 0)]) == []
        assert self._states(await presence.set([Beat(alice, "c2", "online", 0)])) == []  # a second device
        (view,) = await presence.read([alice])
        assert (view.state, view.last_seen) == ("online", None)

    async def test_away_only_when_every_live_connection_is_away(self, presence: Any, clock: Any) -> None:
        from commands.presence import Beat

        alice = self._user()
        await presence.set([Beat(alice, "phone", "online", 0), Beat(alice, "laptop", "online", 0)])
        assert await presence.set([Beat(alice, "phone", "away", 0)]) == []
        assert self._states(await presence.set([Beat(alice, "laptop", "away", 0)])) == ["away"]
        assert self._states(await presence.set([Beat(alice, "phone", "online", 0)])) == ["online"]
        assert await presence.leave(alice, "laptop") is None
        gone = await presence.leave(alice, "phone")
        assert gone is not None and gone.state == "offline"
        assert gone.last_seen is not None and abs(gone.last_seen - clock.now_ms()) < 2000
        assert await presence.leave(alice, "phone") is None  # leaving twice is nothing

    async def test_a_lapsed_user_reads_offline_at_once_and_is_reaped_once(
        self, presence: Any, clock: Any
    ) -> None:
        from commands.presence import Beat

        alice, bob = self._user(), self._user()
        await presence.set([Beat(alice, "c1", "online", 0), Beat(bob, "c1", "online", 0)])
        heard = clock.now_ms()
        await clock.advance(PRESENCE_TTL_MS / 1000 + 0.2)  # the lapse under test
        await presence.set([Beat(bob, "c1", "online", 0)])  # bob heartbeats, alice is silent
        (view,) = await presence.read([alice])
        assert view.state == "offline" and view.last_seen is not None
        assert abs(view.last_seen - heard) < 300  # last_seen is the last heartbeat, not the reap
        reaped = [c for c in await presence.reap(10_000) if c.user_id in (alice, bob)]
        assert [(c.user_id, c.state, c.last_seen) for c in reaped] == [(alice, "offline", view.last_seen)]
        await presence.set([Beat(bob, "c1", "online", 0)])
        assert [c for c in await presence.reap(10_000) if c.user_id in (alice, bob)] == []
        (bob_view,) = await presence.read([bob])
        assert bob_view.state == "online"

    async def test_idle_time_counts_back_from_the_last_heartbeat(self, presence: Any) -> None:
        from commands.presence import Beat

        alice = self._user()
        # reported late: heard TTL+100 ms ago, so already lapsed
        assert await presence.set([Beat(alice, "c1", "online", PRESENCE_TTL_MS + 100)]) == []
        (view,) = await presence.read([alice])
        assert view.state == "offline"

    async def test_transitions_carry_increasing_times(self, presence: Any) -> None:
        from commands.presence import Beat

        alice = self._user()
        (on,) = await presence.set([Beat(alice, "c1", "online", 0)])
        (away,) = await presence.set([Beat(alice, "c1", "away", 0)])
        off = await presence.leave(alice, "c1")
        assert off is not None and on.at < away.at < off.at
        (view,) = await presence.read([alice])
        assert (view.state, view.at, view.last_seen) == ("offline", off.at, off.last_seen)
        # the same user twice in one report: both transitions, in order, at increasing times
        bob = self._user()
        both = await presence.set([Beat(bob, "c1", "online", 0), Beat(bob, "c1", "away", 0)])
        assert [c.state for c in both] == ["online", "away"] and both[0].at < both[1].at

    async def test_a_heartbeat_reported_after_the_close_does_not_bring_the_socket_back(
        self, presence: Any
    ) -> None:
        from commands.presence import Beat

        # A sweep collects a socket's heartbeat, the socket closes, then the sweep's report lands.
        alice = self._user()
        await presence.set([Beat(alice, "c1", "online", 0)])
        gone = await presence.leave(alice, "c1")
        assert gone is not None and gone.state == "offline"
        assert await presence.set([Beat(alice, "c1", "online", 0)]) == []
        (view,) = await presence.read([alice])
        assert view.state == "offline"
        # a new socket of the same user is another connection: online again
        assert self._states(await presence.set([Beat(alice, "c2", "online", 0)])) == ["online"]

    async def test_users_never_seen_read_offline_with_no_last_seen(self, presence: Any) -> None:
        nobody = self._user()
        assert [(v.user_id, v.state, v.last_seen) for v in await presence.read([nobody])] == [
            (nobody, "offline", None)
        ]
        assert await presence.leave(nobody, "c1") is None


PRESENCE_TTL_MS = 1000  # short, so lapses happen; long enough for a loaded machine's stalls


class SyncLogContract:
    """``sync_log`` fixture: the sync log (``apply_at`` of the persist worker's last stage,
    and ``projections.sync.SyncLogReader``). Its partitions' watermarks are shared by every
    test of a store, so each test writes partitions of its own."""

    @staticmethod
    def _partition() -> int:
        return 1000 + uuid.uuid4().int % 1_000_000

    async def test_heads_follow_the_highest_offset_and_never_move_back(self, sync_log: Any) -> None:
        cid, quiet, never = (f"dm:h{uuid.uuid4().hex[:8]}:{n}" for n in ("a", "b", "c"))
        [m1, m2, m3] = spread_ids(3, step_ms=1)
        p = self._partition()
        await sync_log.apply_at(
            [
                (p, 10, message_sent(m1, conversation_id=cid)),
                (p, 12, message_sent(m2, conversation_id=quiet)),
                (p, 15, message_sent(m3, conversation_id=cid)),
            ]
        )
        assert await sync_log.heads([cid, quiet, never]) == {cid: 15, quiet: 12}
        # A redelivered older batch (a worker restarted before it committed) leaves the head alone.
        await sync_log.apply_at([(p, 10, message_sent(m1, conversation_id=cid))])
        assert await sync_log.heads([cid]) == {cid: 15}
        # More conversations than one query takes.
        many = [f"{cid}-{n}" for n in range(250)]
        await sync_log.apply_at(
            [(p + 1, 100 + n, message_sent(m1, conversation_id=c)) for n, c in enumerate(many)]
        )
        assert await sync_log.heads(many) == {c: 100 + n for n, c in enumerate(many)}

    async def test_watermarks_move_after_each_batch_and_never_back(self, sync_log: Any) -> None:
        from events import PresenceChanged

        p, q = self._partition(), self._partition()
        cid = f"dm:w{uuid.uuid4().hex[:8]}:z"
        [m1, m2] = spread_ids(2, step_ms=1)
        await sync_log.apply_at(
            [(p, 7, message_sent(m1, conversation_id=cid)), (q, 3, message_sent(m2, conversation_id=cid))]
        )
        marks = await sync_log.watermarks()
        assert (marks[p], marks[q]) == (7, 3)
        await sync_log.apply_at([(p, 5, message_sent(m1, conversation_id=cid))])  # a redelivery
        # an event of no conversation moves its partition's watermark and adds no row
        await sync_log.apply_at([(q, 9, PresenceChanged(user_id="x", state="online", at=1))])
        marks = await sync_log.watermarks()
        assert (marks[p], marks[q]) == (7, 9)
        assert [o for o, _ in await sync_log.between(cid, 0, 100, 10)] == [3, 5, 7]

    async def test_between_reads_offsets_in_range_ascending_up_to_the_limit(self, sync_log: Any) -> None:
        from events import decode_event

        cid = f"dm:r{uuid.uuid4().hex[:8]}:z"
        ids = spread_ids(6, step_ms=1)
        p = self._partition()
        offsets = [3, 4, 8, 20, 21, 30]
        await sync_log.apply_at(
            [(p, o, message_sent(m, conversation_id=cid)) for o, m in zip(offsets, ids, strict=True)][::-1]
        )
        rows = await sync_log.between(cid, 3, 21, 10)
        assert [o for o, _ in rows] == [4, 8, 20, 21]
        assert [decode_event(e).message_id for _, e in rows] == ids[1:5]  # type: ignore[union-attr]
        assert [o for o, _ in await sync_log.between(cid, 0, 100, 2)] == [3, 4]
        assert await sync_log.between(cid, 21, 21, 10) == []
        assert await sync_log.between(f"{cid}x", 0, 100, 10) == []

    async def test_log_reads_across_buckets_written_in_separate_batches(self, sync_log: Any) -> None:
        from projections.sync_log import BUCKET_BITS

        cid = f"dm:b{uuid.uuid4().hex[:8]}:z"
        [m1, m2, m3] = spread_ids(3, step_ms=1)
        p = self._partition()
        edge = 1 << BUCKET_BITS
        await sync_log.apply_at([(p, edge - 2, message_sent(m1, conversation_id=cid))])
        # the bucket's row is remembered
        await sync_log.apply_at([(p, edge - 1, message_sent(m2, conversation_id=cid))])
        await sync_log.apply_at([(p, edge + 3, message_sent(m3, conversation_id=cid))])  # the next bucket
        assert [o for o, _ in await sync_log.between(cid, 0, 2 * edge, 10)] == [edge - 2, edge - 1, edge + 3]
        assert [o for o, _ in await sync_log.between(cid, edge - 2, 2 * edge, 1)] == [edge - 1]

    async def test_user_changes_are_the_joins_and_leaves_of_a_partition(self, sync_log: Any) -> None:
        from events import Member, MemberRemoved, MembersAdded

        cid = f"g{uuid.uuid4().hex[:12]}"
        ann, ben = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
        [e1, e2, e3] = spread_ids(3, step_ms=1)
        p = self._partition()
        added = MembersAdded(
            conversation_id=cid,
            event_id=e1,
            actor_id="o",
            ts=1,
            members=(Member(user_id=ann, role="member"), Member(user_id=ben, role="member")),
            member_count=3,
        )
        removed = MemberRemoved(
            conversation_id=cid, event_id=e3, actor_id="o", ts=2, user_id=ann, member_count=2
        )
        await sync_log.apply_at(
            [(p, 4, added), (p, 6, message_sent(e2, conversation_id=cid)), (p, 9, removed)]
        )
        assert await sync_log.user_changes(ann, p, 0, 100) == [(4, cid, "added"), (9, cid, "removed")]
        assert await sync_log.user_changes(ann, p, 4, 9) == [(9, cid, "removed")]
        assert await sync_log.user_changes(ben, p, 0, 100) == [(4, cid, "added")]
        assert await sync_log.user_changes(ben, p + 1, 0, 100) == []
        assert await sync_log.user_changes(ann, p, 9, 9) == []
