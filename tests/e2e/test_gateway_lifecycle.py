"""A gateway's life as its clients see it (v1.1 "Presence, reconnects and settings"): a draining
gateway hands its sockets over with ``reconnect`` frames and 1012 closes, and a socket that only
pings becomes ``away`` by itself. Each test runs a gateway of its own beside the system's."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from events import direct_conversation_id
from tests.e2e.conftest import Client, Gateway, System, user
from tests.e2e.test_sync import Device

SPREAD_S = 2.0


async def _frames_until_closed(client: Client) -> tuple[list[dict[str, Any]], int | None]:
    """Every frame the server still sends, and its close code."""
    frames = list(client.backlog)
    client.backlog.clear()
    try:
        while True:
            frames.append(orjson.loads(await asyncio.wait_for(client.ws.recv(), 15)))
    except ConnectionClosed as closed:
        return frames, closed.rcvd.code if closed.rcvd else None


async def test_a_draining_gateway_hands_its_sockets_over_and_the_client_misses_nothing(
    system: System,
) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    draining = Gateway(system, "draining", env={"TIDINGS_DRAIN_SPREAD_S": str(SPREAD_S)})
    stopping: asyncio.Task[None] | None = None
    try:
        phone = Device(system, bob)
        phone.sync()  # the starting cursor
        acked: list[str] = []
        seen: set[str] = set()
        async with system.connect(alice) as sender:
            async with draining.connect(bob) as ws:
                for i in range(5):
                    acked.append((await sender.send_message(cid, f"before {i}"))["message_id"])
                for _ in acked:
                    seen.add((await ws.expect("message", timeout=15))["message"]["message_id"])
                stopping = asyncio.create_task(asyncio.to_thread(draining.stop))
                # Sends go on while the gateway drains and while bob is away.
                for i in range(5):
                    acked.append((await sender.send_message(cid, f"during {i}"))["message_id"])
                frames, code = await _frames_until_closed(ws)
            assert code == 1012
            reconnects = [f for f in frames if f["type"] == "reconnect"]
            assert len(reconnects) == 1 and set(reconnects[0]) == {"type", "after_ms"}
            after_ms = reconnects[0]["after_ms"]
            assert 0 <= after_ms <= SPREAD_S * 1000
            seen |= {f["message"]["message_id"] for f in frames if f["type"] == "message"}
            # Not a wait for a condition: the client obeys the delay the server asked for.
            await asyncio.sleep(after_ms / 1000)
            # Reconnect to the other gateway first, then sync from the cursor.
            async with system.connect(bob) as again:
                for i in range(3):
                    acked.append((await sender.send_message(cid, f"after {i}"))["message_id"])
                    seen.add((await again.expect("message", timeout=15))["message"]["message_id"])
                await phone.sync_until(lambda d: set(acked) <= {m["message_id"] for m in d.messages})
                seen |= {m["message_id"] for m in phone.messages if m["conversation_id"] == cid}
        await stopping
        assert draining.proc.returncode == 0, draining.log.read_text()[-2000:]
        assert seen == set(acked)
    finally:
        if stopping is None:
            draining.stop()


def _readyz(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as reply:
            return int(reply.status), orjson.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


async def test_a_stopping_gateway_is_unready_first_and_serves_its_sockets_until_it_hands_them_over(
    system: System,
) -> None:
    """With TIDINGS_DRAIN_UNREADY_S (the cluster profile: a load balancer's checks must see the
    gateway leave before its clients reconnect), /readyz answers 503 at once while the socket
    still gets its pushes; the reconnect frame comes after that time."""
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    unready_s = 3.0
    leaving = Gateway(
        system, "unready", env={"TIDINGS_DRAIN_UNREADY_S": str(unready_s), "TIDINGS_DRAIN_SPREAD_S": "0"}
    )
    stopping: asyncio.Task[None] | None = None
    try:
        async with system.connect(alice) as sender, leaving.connect(bob) as ws:
            await sender.send_message(cid, "before")
            await ws.expect("message", timeout=15)
            assert (await asyncio.to_thread(_readyz, leaving.http))[0] == 200
            stopping = asyncio.create_task(asyncio.to_thread(leaving.stop))
            signalled = asyncio.get_running_loop().time()
            while (ready := await asyncio.to_thread(_readyz, leaving.http))[0] != 503:
                assert asyncio.get_running_loop().time() - signalled < 10, "/readyz never turned 503"
                await asyncio.sleep(0.1)
            assert ready[1] == {"ready": False, "checks": {"gateway": "draining"}}
            # Unready, still serving: a message sent now is pushed on this socket.
            ack = await sender.send_message(cid, "while unready")
            pushed = await ws.expect("message", timeout=15)
            assert pushed["message"]["message_id"] == ack["message_id"]
            frames, code = await _frames_until_closed(ws)
            handed_over = asyncio.get_running_loop().time() - signalled
        assert code == 1012
        assert [f["type"] for f in frames if f["type"] == "reconnect"] == ["reconnect"]
        assert handed_over >= unready_s - 0.5, handed_over
        await stopping
        assert leaving.proc.returncode == 0, leaving.log.read_text()[-2000:]
    finally:
        if stopping is None:
            leaving.stop()


@pytest.fixture(scope="module")
def quick_away(system: System) -> Any:
    # Its sockets' presence outlives a missed report by 30 s, not the suite's 4: this test is
    # about away, and a lapse to offline (tested in test_presence.py) would only be a stall of
    # this machine. CI once saw one: ``offline`` within a second of the ping frame.
    env = {
        "TIDINGS_PRESENCE_AWAY_AFTER_S": "1.5",
        "TIDINGS_PRESENCE_TTL_S": "30",
        "TIDINGS_IDLE_CLOSE_S": "60",
    }
    gateway = Gateway(system, "quick-away", env=env)
    try:
        yield gateway
    finally:
        gateway.stop()


async def test_a_socket_that_only_pings_becomes_away_and_online_with_its_next_frame(
    system: System, quick_away: Gateway
) -> None:
    alice, bob = user(), user()
    opened = {"kind": "direct", "members": [alice]}
    status, _ = system.request("POST", "/v1/conversations", user=bob, body=opened)
    assert status == 200
    async with system.connect(bob) as watcher:
        await watcher.send({"type": "watch", "user_ids": [alice]})
        await watcher.expect("presence", user_id=alice, state="offline")
        async with quick_away.connect(alice) as phone:  # WebSocket pings only, from here on
            await watcher.expect("presence", user_id=alice, state="online")
            await watcher.expect("presence", user_id=alice, state="away", timeout=10)
            # off the loop, so that the sockets' pings go on meanwhile
            read = await asyncio.to_thread(system.request, "GET", f"/v1/users/{alice}/presence", user=bob)
            assert read[1]["state"] == "away"
            await phone.send({"type": "ping", "ref": "p"})  # a ping frame is no activity either
            await phone.expect("pong", ref="p")
            await watcher.expect_none("presence", user_id=alice, within=1.0)
            await phone.send({"type": "view", "conversation_id": None})  # any other frame is
            await watcher.expect("presence", user_id=alice, state="online")
            await watcher.expect("presence", user_id=alice, state="away", timeout=10)
