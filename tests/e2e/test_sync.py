"""``/v1/sync`` over the real system: starting state, then everything a device missed, paged,
in order, without gaps, including a message appended to the log late with an older id."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from events import MessageSent, Topics, direct_conversation_id, encode_event, partition_key, snowflake_ts
from tests.e2e.conftest import FANOUT_THRESHOLD, System, user, wait_until
from tests.e2e.test_groups import create_group


class Device:
    """A device that syncs the way the protocol says: start, then from its cursor while
    ``has_more``; it keeps everything it saw, in the order it saw it."""

    def __init__(self, system: System, user_id: str) -> None:
        self.system, self.user_id = system, user_id
        self.cursor: str | None = None
        self.messages: list[dict[str, Any]] = []
        self.receipts: list[dict[str, Any]] = []
        self.conversations: list[dict[str, Any]] = []
        self.pages = 0

    def sync(self, limit: int = 500) -> None:
        while True:
            path = "/v1/sync" + (f"?since={self.cursor}&limit={limit}" if self.cursor else "")
            status, body = self.system.request("GET", path, user=self.user_id)
            assert status == 200, body
            assert set(body) == {
                *("messages", "receipts", "conversations", "cursor", "has_more"),
                *("to_device", "device_lists"),
            }
            self.pages += 1
            self.messages += body["messages"]
            self.receipts += body["receipts"]
            self.conversations += body["conversations"]
            self.cursor = body["cursor"]
            if not body["has_more"]:
                return

    async def sync_until(self, done: Any, timeout: float = 30) -> None:  # noqa: ASYNC109
        """Sync again (from the cursor) until ``done(self)``: the persist worker applies the
        log a few ms behind the acks, and sync never goes past what it has applied."""

        def caught_up() -> bool:
            self.sync(limit=50)
            return bool(done(self))

        if not await wait_until(caught_up, timeout=timeout, interval=0.2):
            raise AssertionError(
                f"sync never caught up: {len(self.messages)} messages, {self.receipts}; "
                f"{await self._positions()}"
            )

    async def _positions(self) -> str:
        """Where the persist worker is against the log (to tell a slow worker from a skip)."""
        from archive.adapters.kafka_source import KafkaLogSource
        from projections.adapters.cql import Cql, connect_to
        from projections.sync import decode_cursor
        from projections.sync_log import CassandraSyncLog

        settings = self.system.settings
        cluster, session = await asyncio.to_thread(connect_to, settings)
        try:
            marks = await CassandraSyncLog(Cql(session, settings.cassandra_keyspace)).watermarks()
        finally:
            cluster.shutdown()
        topic = Topics(settings.topic_prefix).conversation_events
        async with KafkaLogSource(settings.kafka_bootstrap, topic, settings.topic_partitions) as log:
            ends = await log.end_offsets()
        # The log position only: the cursor's to-device (``~``) and device-list (``!``) parts
        # follow it (query_api/sync_api.py).
        log_part = (self.cursor or "").partition("!")[0].partition("~")[0]
        cursor = decode_cursor(log_part, settings.topic_partitions) if log_part else {}
        return f"cursor {cursor}, applied {marks}, log ends {ends}"


def _ids(messages: list[dict[str, Any]]) -> list[str]:
    return [m["message_id"] for m in messages]


async def test_the_first_sync_gives_the_starting_state(system: System) -> None:
    alice, bob = user(), user()
    dm = direct_conversation_id(alice, bob)
    group = create_group(system, alice, [bob], title="Start")
    async with system.connect(bob) as b:
        sent = [await b.send_message(dm, f"dm {i}") for i in range(3)]
        sent += [await b.send_message(group, f"group {i}") for i in range(25)]
    status, _ = system.request(
        "POST",
        f"/v1/conversations/{dm}/receipts",
        user=alice,
        body={"message_id": sent[1]["message_id"], "status": "read"},
    )
    assert status == 202
    device = Device(system, alice)

    def complete(d: Device) -> bool:
        return {c["conversation"]["conversation_id"] for c in d.conversations} >= {dm, group} and any(
            r["conversation_id"] == dm for r in d.receipts
        )

    def caught_up() -> bool:
        nonlocal device
        device = Device(system, alice)
        device.sync()
        shown = {c["conversation"]["conversation_id"]: c["conversation"] for c in device.conversations}
        settled = dm in shown and shown[dm]["unread_count"] == 1
        return (
            complete(device)
            and settled
            and len([m for m in device.messages if m["conversation_id"] == group]) == 20
        )

    assert await wait_until(caught_up, timeout=30, interval=0.2)
    assert device.pages == 1 and device.cursor
    assert {c["event"] for c in device.conversations} == {"added"}
    by_conversation = {c["conversation"]["conversation_id"]: c["conversation"] for c in device.conversations}
    assert by_conversation[group]["title"] == "Start"
    assert by_conversation[dm]["unread_count"] == 1
    group_ids = _ids([m for m in device.messages if m["conversation_id"] == group])
    assert group_ids == [a["message_id"] for a in sent[-20:]]  # the newest 20, ascending
    assert {
        "conversation_id": dm,
        "user_id": alice,
        "message_id": sent[1]["message_id"],
        "status": "read",
    } in (device.receipts)


async def test_a_device_offline_while_200_messages_arrive_in_5_conversations_gets_them_all(
    system: System,
) -> None:
    me, friends = user(), [user() for _ in range(4)]
    big = [user() for _ in range(FANOUT_THRESHOLD)]  # a group above the fan-out threshold
    conversations = [
        direct_conversation_id(me, friends[0]),
        direct_conversation_id(me, friends[1]),
        create_group(system, friends[2], [me, friends[3]], title="small"),
        create_group(system, friends[3], [me, friends[2]], title="leaving"),
        create_group(system, friends[2], [me, *big], title="large"),
    ]
    leaving = conversations[3]
    tablet = Device(system, me)
    await tablet.sync_until(lambda d: len(d.conversations) == 3)  # the groups; no DM holds a message yet
    start = tablet.cursor

    acked: dict[str, list[str]] = {cid: [] for cid in conversations}
    async with (
        system.connect(me, "phone") as phone,
        system.connect(friends[2]) as f2,
        system.connect(friends[3]) as f3,
    ):
        senders = {
            conversations[0]: phone,
            conversations[1]: phone,
            conversations[2]: f2,
            leaving: f3,
            conversations[4]: f2,
        }
        removed = False
        for i in range(1000):
            cid = conversations[i % 5]
            if cid == leaving and removed:
                continue  # after the removal below
            ack = await senders[cid].send_message(cid, f"m{i}")
            acked[cid].append(ack["message_id"])
            if i == 150:
                status, _ = system.request(
                    "DELETE", f"/v1/conversations/{leaving}/members/{me}", user=friends[3]
                )
                assert status == 204
                removed = True
            if sum(map(len, acked.values())) == 200:
                break
        # messages in the group after the removal: the tablet must not get them
        after_removal = [(await f3.send_message(leaving, f"after {j}"))["message_id"] for j in range(3)]
        # receipts: mine (from the phone) and a small group's member's reach the tablet; a
        # large group's members' do not (receipts there are by query only)
        small, large = conversations[2], conversations[4]
        for client in (phone, f3):
            await client.send(
                {
                    "type": "receipt",
                    "conversation_id": small,
                    "message_id": acked[small][-1],
                    "status": "read",
                }
            )
        status, _ = system.request(
            "POST",
            f"/v1/conversations/{large}/receipts",
            user=big[0],
            body={"message_id": acked[large][-1], "status": "read"},
        )
        assert status == 202
        new_group = create_group(system, friends[0], [me], title="new")
        after_join = await phone.send_message(new_group, "hello new group")

    expected = {m for ids in acked.values() for m in ids} | {after_join["message_id"]}
    assert len(expected) == 201

    tablet.messages, tablet.receipts, tablet.conversations = [], [], []
    tablet.cursor = start

    def caught_up(d: Device) -> bool:
        return expected <= set(_ids(d.messages)) and {me, friends[3]} <= {r["user_id"] for r in d.receipts}

    await tablet.sync_until(caught_up)
    got = _ids(tablet.messages)
    assert len(got) == len(set(got)), "a message came twice"
    assert not set(after_removal) & set(got)
    assert set(got) == expected  # nothing else
    assert tablet.pages >= 4  # 50 per page: it was paged
    for cid, ids in acked.items():
        seen = [m["message_id"] for m in tablet.messages if m["conversation_id"] == cid]
        assert seen == ids, f"order in {cid}"  # one sender per conversation: acks are in order
    events = {(c["event"], c["conversation"]["conversation_id"]) for c in tablet.conversations}
    assert ("removed", leaving) in events and ("added", new_group) in events
    for reader in (me, friends[3]):
        mark = {"conversation_id": small, "user_id": reader, "message_id": acked[small][-1], "status": "read"}
        assert mark in tablet.receipts
    assert big[0] not in {r["user_id"] for r in tablet.receipts}

    # Synced up: the next sync is empty, and the cursor stays.
    cursor = tablet.cursor
    tablet.messages = []
    tablet.sync()
    assert tablet.messages == [] and tablet.cursor == cursor


async def test_a_message_appended_late_with_an_older_id_is_not_skipped(system: System, services: Any) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    async with system.connect(alice) as a:
        early = await a.send_message(cid, "first")
        # A send that was accepted now (its id is taken) but reaches the log later.
        late = MessageSent(
            conversation_id=cid,
            message_id=int(early["message_id"]) + 1,
            sender_id=alice,
            sender_device="slow",
            client_msg_id=uuid.uuid4().hex,
            kind="text",
            body="late",
            ts=snowflake_ts(int(early["message_id"]) + 1),
        )
        newer = await a.send_message(cid, "second")
    assert int(newer["message_id"]) > late.message_id
    device = Device(system, bob)
    await device.sync_until(lambda d: newer["message_id"] in _ids(d.messages))
    assert late.message_id not in {int(m) for m in _ids(device.messages)}
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            Topics(services.topic_prefix).conversation_events, encode_event(late), key=partition_key(cid)
        )
    finally:
        await producer.stop()
    device.messages = []
    await device.sync_until(lambda d: str(late.message_id) in _ids(d.messages))
    # The cursor was already past the newer message's id; the late one still came, once
    # (the two others may come again only if the cursor had not yet passed their offsets).
    ids = _ids(device.messages)
    assert ids.count(str(late.message_id)) == 1
    assert set(ids) <= {early["message_id"], str(late.message_id), newer["message_id"]}


@pytest.mark.parametrize(
    "query",
    [
        "since=garbage",
        "since=1.@@",
        "since=1.%00",
        "since=1.MToxOjE",
        "since=2.AAAA",
        "since=1.OTk6MQ",
        "since=1.MTotNQ",
        "limit=1e3",
        "limit=x",
    ],
)
async def test_bad_sync_arguments_are_400(system: System, query: str) -> None:
    status, body = system.request("GET", f"/v1/sync?{query}", user=user())
    assert status == 400 and body["error"]["code"] == "invalid", body


async def test_limit_is_clamped_like_history_paging(system: System) -> None:
    # like `limit` of history: clamped to 1..1000, not refused
    for limit in ("0", "-5", "100000"):
        assert system.request("GET", f"/v1/sync?limit={limit}", user=user())[0] == 200


async def test_sync_needs_a_token(system: System) -> None:
    assert system.request("GET", "/v1/sync")[0] == 401
    assert system.request("GET", "/v1/sync", token="nope")[0] == 401
