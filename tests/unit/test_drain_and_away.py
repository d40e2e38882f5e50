"""A draining gateway's hand-over of its sockets, and ``away`` by silence (v1.1 "Presence,
reconnects and settings"), with fake sockets, the in-memory presence store (its contract:
``tests/contracts.py``) and a fake clock that both share."""

from __future__ import annotations

import asyncio
import random

import orjson

from commands.memory import MemoryEventLog, MemoryPresence
from query_api.connection import Connection
from query_api.drain import CLOSE_SERVICE_RESTART, drain
from query_api.presence import PresenceTracker
from tests.unit.test_hub import FakeSocket


def _conns(n: int) -> tuple[list[Connection], list[list[str]]]:
    logs: list[list[str]] = [[] for _ in range(n)]
    return [Connection(f"u{i}", "d", FakeSocket(logs[i]), queue_size=10) for i in range(n)], logs


async def test_each_socket_gets_a_jittered_reconnect_then_a_1012_close() -> None:
    conns, logs = _conns(40)
    await drain(conns, spread_s=3.0, rng=random.Random(7))
    delays = []
    for log in logs:
        assert len(log) == 2 and log[1] == f"closed {CLOSE_SERVICE_RESTART}", log
        frame = orjson.loads(log[0])
        assert set(frame) == {"type", "after_ms"} and frame["type"] == "reconnect"
        assert 0 <= frame["after_ms"] <= 3000
        delays.append(frame["after_ms"])
    assert len(set(delays)) > 20  # spread out, not one instant for everybody


async def test_a_backed_up_socket_gets_its_reconnect_frame_before_the_close() -> None:
    conns, logs = _conns(1)
    socket = conns[0].socket
    assert isinstance(socket, FakeSocket)
    socket.writable = False
    conns[0].push(b'{"type":"message"}')  # waits in the backlog behind a full transport

    def transport_drains() -> None:
        socket.writable = True
        conns[0].flush()

    asyncio.get_running_loop().call_later(0.1, transport_drains)
    await drain(conns, spread_s=1.0)
    assert [orjson.loads(x)["type"] for x in logs[0][:2]] == ["message", "reconnect"]
    assert logs[0][2] == f"closed {CLOSE_SERVICE_RESTART}"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _tracker() -> tuple[PresenceTracker, MemoryPresence, _Clock, Connection]:
    clock = _Clock()
    store = MemoryPresence(ttl_ms=60_000, clock=clock)
    tracker = PresenceTracker(
        store, MemoryEventLog(), idle_close_s=90, sweep_s=1, away_after_s=300, clock=clock
    )
    (conn,), _ = _conns(1)
    await tracker.connected(conn)
    return tracker, store, clock, conn


async def _state(store: MemoryPresence) -> str:
    (view,) = await store.read(["u0"])
    return view.state


async def test_a_socket_that_only_pings_becomes_away_and_its_next_frame_makes_it_online() -> None:
    tracker, store, clock, conn = await _tracker()
    assert await _state(store) == "online"
    for _ in range(9):  # pings every 30 s: heard, not active
        clock.now += 30
        conn.heard = clock.now
        await tracker.sweep()
    assert await _state(store) == "online"  # 270 s of pings only
    clock.now += 30
    conn.heard = clock.now
    await tracker.sweep()
    assert await _state(store) == "away" and conn.auto_away
    await tracker.sweep()
    assert (store.beats[-1].conn_id, store.beats[-1].state) == (conn.presence_id, "away")
    conn.active = conn.heard = clock.now + 1  # a frame other than a ping
    await tracker.resumed(conn)
    assert await _state(store) == "online" and not conn.auto_away


async def test_activity_keeps_a_socket_online_and_a_chosen_away_is_left_alone() -> None:
    tracker, store, clock, conn = await _tracker()
    for _ in range(20):
        clock.now += 30
        conn.heard = conn.active = clock.now  # real frames
        await tracker.sweep()
    assert await _state(store) == "online"
    await tracker.set_state(conn, "away")
    conn.active = clock.now + 1
    await tracker.resumed(conn)  # not made away by silence: stays as the client said
    assert await _state(store) == "away"
    await tracker.set_state(conn, "online")
    clock.now += 301
    conn.heard = clock.now
    await tracker.sweep()
    assert await _state(store) == "away"
