"""A draining gateway's hand-over of its sockets, and ``away`` by silence (v1.1 "Presence,
reconnects and settings"), with fake sockets, a fake presence store and a fake clock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import orjson

from commands.presence import Beat
from events import ChatEvent, PresenceChanged
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


class _Store:
    """Records the states reported; the user's state is the 'best' of their sockets'."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.reports: list[tuple[str, str]] = []

    async def set(self, beats: Sequence[Beat]) -> list[PresenceChanged]:
        changes = []
        for beat in beats:
            self.reports.append((beat.conn_id, beat.state))
            if self.states.get(beat.user_id) != beat.state:
                self.states[beat.user_id] = beat.state
                changes.append(PresenceChanged(user_id=beat.user_id, state=beat.state, at=len(self.reports)))
        return changes

    async def leave(self, user_id: str, conn_id: str) -> PresenceChanged | None:
        return None

    async def reap(self, limit: int) -> list[PresenceChanged]:
        return []

    async def read(self, user_ids: Sequence[str]) -> list[object]:
        return []


class _Log:
    def __init__(self) -> None:
        self.events: list[ChatEvent] = []

    async def append(self, event: ChatEvent) -> None:
        self.events.append(event)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _tracker() -> tuple[PresenceTracker, _Store, _Clock, Connection]:
    store, clock = _Store(), _Clock()
    tracker = PresenceTracker(store, _Log(), idle_close_s=90, sweep_s=1, away_after_s=300, clock=clock)  # type: ignore[arg-type]
    (conn,), _ = _conns(1)
    await tracker.connected(conn)
    return tracker, store, clock, conn


async def test_a_socket_that_only_pings_becomes_away_and_its_next_frame_makes_it_online() -> None:
    tracker, store, clock, conn = await _tracker()
    assert store.states == {"u0": "online"}
    for _ in range(9):  # pings every 30 s: heard, not active
        clock.now += 30
        conn.heard = clock.now
        await tracker.sweep()
    assert store.states == {"u0": "online"}  # 270 s of pings only
    clock.now += 30
    conn.heard = clock.now
    await tracker.sweep()
    assert store.states == {"u0": "away"} and conn.auto_away
    await tracker.sweep()
    assert store.reports[-1] == (conn.presence_id, "away")
    conn.active = conn.heard = clock.now + 1  # a frame other than a ping
    await tracker.resumed(conn)
    assert store.states == {"u0": "online"} and not conn.auto_away


async def test_activity_keeps_a_socket_online_and_a_chosen_away_is_left_alone() -> None:
    tracker, store, clock, conn = await _tracker()
    for _ in range(20):
        clock.now += 30
        conn.heard = conn.active = clock.now  # real frames
        await tracker.sweep()
    assert store.states == {"u0": "online"}
    await tracker.set_state(conn, "away")
    conn.active = clock.now + 1
    await tracker.resumed(conn)  # not made away by silence: stays as the client said
    assert store.states == {"u0": "away"}
    await tracker.set_state(conn, "online")
    clock.now += 301
    conn.heard = clock.now
    await tracker.sweep()
    assert store.states == {"u0": "away"}
