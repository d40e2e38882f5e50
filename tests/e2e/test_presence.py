"""Presence over the real system: transitions, watchers, last_seen, heartbeats, strangers.

The system runs with presence timings scaled down (see ``conftest``): TTL 4 s, silent sockets
closed at 8 s, a sweep every 0.25 s; test sockets heartbeat with WebSocket pings every 0.5 s.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import websockets
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from events import Topics, decode_event, direct_conversation_id
from tests.e2e.conftest import IDLE_CLOSE_S, PRESENCE_TTL_S, System, user, wait_until
from tests.polling import until as _until


def _group(system: System, owner: str, *members: str) -> str:
    status, body = system.request(
        "POST",
        "/v1/conversations",
        user=owner,
        body={"kind": "group", "title": "p", "members": list(members)},
    )
    assert status == 201, body
    return str(body["conversation"]["conversation_id"])


def _presence(system: System, viewer: str, target: str) -> tuple[int, Any]:
    return system.request("GET", f"/v1/users/{target}/presence", user=viewer)


async def test_watcher_sees_online_away_and_offline_with_last_seen(system: System) -> None:
    alice, bob = user(), user()
    _group(system, alice, bob)
    async with system.connect(bob) as watcher:
        await watcher.send({"type": "watch", "user_ids": [alice]})
        first = await watcher.expect("presence", user_id=alice)
        assert first == {"type": "presence", "user_id": alice, "state": "offline", "last_seen": None}
        async with system.connect(alice, "phone") as phone:
            await watcher.expect("presence", user_id=alice, state="online")
            assert _presence(system, bob, alice) == (
                200,
                {"user_id": alice, "state": "online", "last_seen": None},
            )
            await phone.send({"type": "presence", "state": "away"})
            await watcher.expect("presence", user_id=alice, state="away")
            await phone.send({"type": "presence", "state": "online"})
            await watcher.expect("presence", user_id=alice, state="online")
        left_at = time.time() * 1000
        offline = await watcher.expect("presence", user_id=alice, state="offline")
        assert abs(offline["last_seen"] - left_at) < 2000
        status, body = _presence(system, bob, alice)
        assert status == 200
        assert body == {"user_id": alice, "state": "offline", "last_seen": offline["last_seen"]}


async def test_a_user_is_online_while_any_device_is_and_away_only_when_all_are(system: System) -> None:
    alice, bob = user(), user()
    _group(system, bob, alice)
    async with system.connect(bob) as watcher:
        await watcher.send({"type": "watch", "user_ids": [alice]})
        await watcher.expect("presence", user_id=alice, state="offline")
        async with system.connect(alice, "laptop") as laptop:
            await watcher.expect("presence", user_id=alice, state="online")
            async with system.connect(alice, "phone") as phone:
                await phone.send({"type": "presence", "state": "away"})
                await watcher.expect_none("presence", user_id=alice)  # the laptop is still online
                await laptop.send({"type": "presence", "state": "away"})
                await watcher.expect("presence", user_id=alice, state="away")
            # the phone left; the laptop is away
            await watcher.expect_none("presence", user_id=alice)
            assert _presence(system, bob, alice)[1]["state"] == "away"
        await watcher.expect("presence", user_id=alice, state="offline")


async def test_strangers_cannot_read_or_watch_presence(system: System) -> None:
    alice, bob, stranger = user(), user(), user()
    _group(system, alice, bob)
    async with system.connect(alice):
        status, body = _presence(system, stranger, alice)
        assert status == 403 and body["error"]["code"] == "forbidden"
        async with system.connect(stranger) as snoop:
            await snoop.send({"type": "watch", "ref": "w1", "user_ids": [alice, stranger]})
            error = await snoop.expect("error", ref="w1")
            assert error["code"] == "forbidden" and alice in error["message"]
            # watching oneself is allowed; alice is not watched
            await snoop.expect("presence", user_id=stranger, state="online")
            await snoop.expect_none("presence", user_id=alice)
    assert _presence(system, alice, bob)[0] == 200
    assert _presence(system, alice, "bad%20id!")[0] == 400
    assert system.request("GET", f"/v1/users/{alice}/presence")[0] == 401


async def test_watch_replaces_the_list_and_unwatched_users_send_nothing(system: System) -> None:
    alice, bob, carol = user(), user(), user()
    _group(system, carol, alice, bob)
    async with system.connect(carol) as watcher:
        await watcher.send({"type": "watch", "user_ids": [alice]})
        await watcher.expect("presence", user_id=alice, state="offline")
        await watcher.send({"type": "watch", "user_ids": [bob]})
        await watcher.expect("presence", user_id=bob, state="offline")
        async with system.connect(alice), system.connect(bob):
            await watcher.expect("presence", user_id=bob, state="online")
        await watcher.expect("presence", user_id=bob, state="offline")
        assert not [f for f in watcher.backlog if f.get("user_id") == alice]


async def test_bad_presence_and_watch_frames_get_errors_and_the_socket_lives(system: System) -> None:
    async with system.connect(user()) as client:
        cases: list[tuple[str, dict[str, Any]]] = [
            ("a", {"type": "presence", "state": "offline"}),
            ("b", {"type": "presence"}),
            ("c", {"type": "watch", "user_ids": "alice"}),
            ("d", {"type": "watch", "user_ids": [f"u{i}" for i in range(501)]}),
            ("e", {"type": "watch", "user_ids": [""]}),
            ("f", {"type": "watch", "user_ids": [7]}),
        ]
        for ref, frame in cases:
            await client.send({**frame, "ref": ref})
            error = await client.expect("error", ref=ref)
            assert error["code"] == "invalid", error
        await client.send({"type": "ping", "ref": "alive"})
        await client.expect("pong", ref="alive")


async def test_a_silent_socket_is_closed_and_its_user_goes_offline(system: System) -> None:
    alice, bob = user(), user()
    _group(system, alice, bob)
    async with system.connect(bob) as watcher:
        await watcher.send({"type": "watch", "user_ids": [alice]})
        await watcher.expect("presence", user_id=alice, state="offline")
        async with system.connect(alice, heartbeat=False) as silent:
            opened = time.monotonic()
            await watcher.expect("presence", user_id=alice, state="online")
            # The presence lapses after the TTL (no heartbeat), before the socket is closed.
            lapsed = await watcher.expect(
                "presence", user_id=alice, state="offline", timeout=PRESENCE_TTL_S + 5
            )
            assert lapsed["last_seen"] is not None
            # the close comes after whatever the server pushed first: read until it does
            with pytest.raises(websockets.ConnectionClosed) as closed:  # noqa: PT012
                async with asyncio.timeout(IDLE_CLOSE_S + 5):
                    while True:  # pushes may come first (the group's `conversation` frame)
                        await silent.ws.recv()
            waited = time.monotonic() - opened
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408
        assert waited >= IDLE_CLOSE_S - 0.5
        # A heartbeating socket outlives that by far.
        async with system.connect(alice) as beating:
            # The behaviour under test, not a wait: the socket lives past the idle close.
            await asyncio.sleep(IDLE_CLOSE_S + 1)
            await beating.send({"type": "ping", "ref": "still"})
            await beating.expect("pong", ref="still")


async def test_a_socket_with_unread_frames_keeps_heartbeating(system: System) -> None:
    """A client that reads its frames only now and then (as the test clients do) keeps its
    socket: the frames pushed meanwhile must not stop it from reading the pongs its
    heartbeat waits for (websockets' keepalive sends no ping before the last one's pong)."""
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    async with system.connect(bob) as reader, system.connect(alice) as sender:
        await reader.settled()
        sent = [(await sender.send_message(cid, f"unread {i}"))["message_id"] for i in range(40)]
        # 40 frames pushed to a socket that reads none of them for longer than the idle close
        await asyncio.sleep(IDLE_CLOSE_S + 2)
        await reader.send({"type": "ping", "ref": "alive"})
        await reader.expect("pong", ref="alive")
        pushed = [f["message"]["message_id"] for f in reader.backlog if f["type"] == "message"]
        assert pushed == sent


async def test_only_transitions_reach_the_log(system: System, services: Any) -> None:
    alice, bob = user(), user()
    _group(system, alice, bob)
    async with system.connect(alice) as a:
        for _ in range(10):
            await a.send({"type": "ping"})
            await a.expect("pong")
            # The behaviour under test, not a wait: time passes over several sweeps and
            # WebSocket heartbeats, and none of them is a transition.
            await asyncio.sleep(0.3)
        await a.send({"type": "presence", "state": "away"})
        await a.send({"type": "presence", "state": "away"})  # no change: no event
        await a.send({"type": "presence", "state": "online"})
        await a.send({"type": "ping"})
        await a.expect("pong")
    await _until(lambda: _presence(system, bob, alice)[1]["state"] == "offline")
    # The gateway appends the transition after deciding it: give the append a moment.
    states: list[str] = []

    async def appended() -> bool:
        nonlocal states
        states = await _states_in_log(services, alice)
        return states[-1:] == ["offline"]

    await wait_until(appended, interval=0.2)
    assert states == ["online", "away", "online", "offline"]


async def _states_in_log(settings: Any, user_id: str) -> list[str]:
    topic = Topics(settings.topic_prefix).presence_events
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        states: list[str] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    if record.key == user_id.encode():
                        event = decode_event(record.value)
                        states.append(event.state)  # type: ignore[union-attr]
        return states
    finally:
        await consumer.stop()


async def test_presence_converges_after_a_gateway_restart(system: System) -> None:
    alice, bob, carol = user(), user(), user()
    _group(system, bob, alice, carol)
    async with system.connect(bob) as watcher, system.connect(alice), system.connect(carol):
        await watcher.send({"type": "watch", "user_ids": [alice, carol]})
        await watcher.expect("presence", user_id=alice, state="online")
        await watcher.expect("presence", user_id=carol, state="online")
        system.kill("gateway")  # no goodbye from any socket
        system.start("gateway")
        system.wait_ready()
    # Alice and Bob reconnect; Carol does not.
    async with system.connect(alice), system.connect(bob) as watcher:
        await _until(lambda: _presence(system, bob, alice)[1]["state"] == "online")
        await watcher.send({"type": "watch", "user_ids": [alice, carol]})
        assert (await watcher.expect("presence", user_id=alice))["state"] == "online"
        # Carol's socket died with the gateway: her presence lapses and the sweep reaps it.
        gone = await watcher.expect("presence", user_id=carol, state="offline", timeout=PRESENCE_TTL_S + 10)
        assert gone["last_seen"] is not None
        # Alice's dead socket lapsed too, but her new one keeps her online.
        await watcher.expect_none("presence", user_id=alice, within=PRESENCE_TTL_S + 1)
        assert _presence(system, bob, alice)[1]["state"] == "online"
        assert _presence(system, bob, carol)[1] == {
            "user_id": carol,
            "state": "offline",
            "last_seen": gone["last_seen"],
        }


async def _watch_allowed(client: Any, target: str, ref: str) -> None:
    """``watch`` of ``target`` is accepted: their presence arrives and no error does."""
    await client.send({"type": "watch", "ref": ref, "user_ids": [target]})
    await client.expect("presence", user_id=target)
    await client.expect_none("error", ref=ref, within=0.3)


async def test_presence_is_allowed_at_once_after_a_direct_chat_is_opened(system: System) -> None:
    # The refusal before comes first, so a cached "no" cannot outlive the opening.
    alice, bob = user(), user()
    assert _presence(system, alice, bob)[0] == 403
    assert _presence(system, bob, alice)[0] == 403
    status, _ = system.request(
        "POST", "/v1/conversations", user=alice, body={"kind": "direct", "members": [bob]}
    )
    assert status == 200
    assert _presence(system, alice, bob)[0] == 200
    assert _presence(system, bob, alice)[0] == 200
    async with system.connect(alice) as a_ws, system.connect(bob) as b_ws:
        await _watch_allowed(a_ws, bob, "wa")
        await _watch_allowed(b_ws, alice, "wb")
    # Opening it again changes nothing and appends nothing new to anyone's inbox.
    status, again = system.request(
        "POST", "/v1/conversations", user=alice, body={"kind": "direct", "members": [bob]}
    )
    assert status == 200 and again["conversation"]["last_message"] is None


async def test_presence_is_allowed_at_once_after_a_first_direct_message(system: System) -> None:
    alice, bob = user(), user()
    cid = f"dm:{min(alice, bob)}:{max(alice, bob)}"
    async with system.connect(alice) as a_ws, system.connect(bob) as b_ws:
        await a_ws.send({"type": "watch", "ref": "before", "user_ids": [bob]})
        assert (await a_ws.expect("error", ref="before"))["code"] == "forbidden"
        assert _presence(system, bob, alice)[0] == 403
        await a_ws.send_message(cid, "hi")
        assert _presence(system, alice, bob)[0] == 200
        assert _presence(system, bob, alice)[0] == 200
        await _watch_allowed(a_ws, bob, "wa")
        await _watch_allowed(b_ws, alice, "wb")


async def test_presence_is_allowed_at_once_in_a_new_group_and_refused_soon_after_removal(
    system: System,
) -> None:
    alice, bob = user(), user()
    assert _presence(system, bob, alice)[0] == 403
    cid = _group(system, alice, bob)
    assert _presence(system, bob, alice)[0] == 200
    assert _presence(system, alice, bob)[0] == 200
    status, _ = system.request("DELETE", f"/v1/conversations/{cid}/members/{bob}", user=alice)
    assert status == 204
    # A "yes" may be remembered for a few seconds (Contacts' cache), never longer.
    await _until(lambda: _presence(system, bob, alice)[0] == 403, 8.0)
    await _until(lambda: _presence(system, alice, bob)[0] == 403, 8.0)
