"""The gateway's hub with a fake pub/sub: routing by envelope, group membership kept from
join/leave payloads, and registration that is all or nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from events import keys
from events.errors import Unavailable
from projections.delivery import JOINED, LEFT, MESSAGE, routed
from projections.wire import traced
from query_api.config import NoSpans
from query_api.hub import Connection, Hub


class FakePubSub:
    def __init__(self) -> None:
        self.channels: set[str] = set()
        self.fail_subscribe = 0

    async def subscribe(self, *channels: str) -> None:
        if self.fail_subscribe:
            self.fail_subscribe -= 1
            raise ConnectionError("redis down")
        self.channels |= set(channels)

    async def unsubscribe(self, *channels: str) -> None:
        self.channels -= set(channels)

    async def get_message(self, ignore_subscribe_messages: bool = False, timeout: float | None = 0) -> Any:  # noqa: ASYNC109 - redis-py's signature
        await asyncio.sleep(0)
        return None


class FakeSocket:
    """A WebSocket that records what is written; ``writable`` False plays a backed-up
    transport."""

    def __init__(self, sent: list[str]) -> None:
        self.sent = sent
        self.frames: list[bytes] = []
        self.heard = 0.0
        self.writable = True
        self.closed: tuple[int, str] | None = None

    def write_text(self, payload: bytes) -> bool:
        if self.closed is not None:
            return False
        self.frames.append(payload)
        self.sent.append(payload.decode())
        return True

    def close_now(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = (code, reason)
            self.sent.append(f"closed {code}")


def _conn(user: str, sent: list[str]) -> Connection:
    return Connection(user, "d", FakeSocket(sent), queue_size=10)


def _queued(conn: Connection) -> list[bytes]:
    """What was written to the socket."""
    socket = conn.socket
    assert isinstance(socket, FakeSocket)
    return socket.frames


async def _hub(
    groups: dict[str, set[str]] | None = None, pubsub: FakePubSub | None = None, spans: Any = None
) -> tuple[Hub, FakePubSub]:
    pubsub = pubsub or FakePubSub()

    async def groups_of(user_id: str) -> set[str]:
        return set((groups or {}).get(user_id, set()))

    hub = Hub(pubsub, groups_of, shards=4, spans=spans)
    await hub.start()
    return hub, pubsub


async def test_user_channel_payloads_reach_every_socket_of_the_user() -> None:
    hub, pubsub = await _hub()
    a1, a2, b = _conn("alice", []), _conn("alice", []), _conn("bob", [])
    for c in (a1, a2, b):
        await hub.register(c)
    assert keys.user_channel("alice") in pubsub.channels
    assert hub.deliver_to_user("alice", MESSAGE + b'{"type":"message"}') == 2
    assert _queued(a1) == _queued(a2) == [b'{"type":"message"}'] and _queued(b) == []
    await hub.unregister(a1)
    assert keys.user_channel("alice") in pubsub.channels
    await hub.unregister(a2)
    assert keys.user_channel("alice") not in pubsub.channels


async def test_group_shard_payloads_follow_joins_and_leaves_in_order() -> None:
    hub, _ = await _hub(groups={"alice": {"g:1"}})
    alice, bob = _conn("alice", []), _conn("bob", [])
    await hub.register(alice)
    await hub.register(bob)
    assert hub.deliver_to_group(b"mg:1\0first") == 1
    hub.deliver_to_user("bob", JOINED + b"g:1\0added")
    assert hub.deliver_to_group(b"mg:1\0second") == 2
    hub.deliver_to_user("alice", LEFT + b"g:1\0removed")
    assert hub.deliver_to_group(b"mg:1\0third") == 1
    assert _queued(alice) == [b"first", b"second", b"removed"]
    assert _queued(bob) == [b"added", b"second", b"third"]


class RecordedSpan:
    def __init__(self, traceparent: bytes, name: str, attributes: dict[str, Any]) -> None:
        self.traceparent, self.name, self.attributes = traceparent, name, dict(attributes)
        self.writes_inside: list[int] = []

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value


class RecordingSpans(NoSpans):
    def __init__(self, sockets: list[FakeSocket]) -> None:
        self.spans: list[RecordedSpan] = []
        self._sockets = sockets

    @contextlib.contextmanager
    def child_of(
        self, traceparent: bytes, name: str, attributes: dict[str, Any] | None = None
    ) -> Iterator[RecordedSpan]:
        span = RecordedSpan(traceparent, name, attributes or {})
        written = [len(s.frames) for s in self._sockets]
        yield span
        # the writes happened inside the span
        span.writes_inside = [
            after - before
            for before, after in zip(written, (len(s.frames) for s in self._sockets), strict=True)
        ]
        self.spans.append(span)


TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("tracing", [True, False])
async def test_a_traced_payload_reaches_the_sockets_as_the_plain_frame_inside_a_deliver_span(
    tracing: bool,
) -> None:
    alice, bob = _conn("alice", []), _conn("bob", [])
    sockets = [c.socket for c in (alice, bob)]
    spans = RecordingSpans(sockets) if tracing else None  # type: ignore[arg-type]
    hub, _ = await _hub(groups={"alice": {"g:1"}}, spans=spans)
    await hub.register(alice)
    await hub.register(bob)
    assert hub.deliver_to_user("alice", traced(TP, MESSAGE + b'{"type":"message"}')) == 1
    # a join inside a traced payload is still a join: bob then gets the group's messages
    assert hub.deliver_to_user("bob", traced(TP, JOINED + b"g:1\0added")) == 1
    assert hub.deliver_to_group(traced(TP, b"mg:1\0grouped")) == 2
    assert _queued(alice) == [b'{"type":"message"}', b"grouped"]
    assert _queued(bob) == [b"added", b"grouped"]
    if spans is None:
        return
    assert [(s.name, s.traceparent) for s in spans.spans] == [("gateway.deliver", TP.encode())] * 3
    assert [s.attributes for s in spans.spans] == [
        {"tidings.recipient": "alice", "tidings.sockets": 1},
        {"tidings.recipient": "bob", "tidings.sockets": 1},
        {"tidings.channel": "group", "tidings.sockets": 2},
    ]
    assert [s.writes_inside for s in spans.spans] == [[1, 0], [0, 1], [1, 1]]


async def test_a_failed_subscribe_leaves_nothing_behind() -> None:
    pubsub = FakePubSub()
    hub, _ = await _hub(pubsub=pubsub)
    pubsub.fail_subscribe = 1
    with pytest.raises(Unavailable):
        await hub.register(_conn("alice", []))
    assert hub.connections == 0
    again = _conn("alice", [])
    await hub.register(again)  # not stuck: this one subscribes
    assert keys.user_channel("alice") in pubsub.channels
    assert hub.deliver_to_user("alice", MESSAGE + b"x") == 1


async def test_a_failed_group_load_leaves_nothing_behind() -> None:
    pubsub = FakePubSub()

    async def broken(user_id: str) -> set[str]:
        raise TimeoutError("cassandra")

    hub = Hub(pubsub, broken, shards=4)
    await hub.start()
    with pytest.raises(Unavailable):
        await hub.register(_conn("alice", []))
    assert hub.connections == 0
    assert keys.user_channel("alice") not in pubsub.channels


async def test_a_backed_up_socket_gets_its_frames_in_order_when_the_transport_drains() -> None:
    conn = _conn("alice", [])
    socket = conn.socket
    assert isinstance(socket, FakeSocket)
    conn.push(b"1")
    socket.writable = False  # above the transport's high-water mark
    for frame in (b"2", b"3"):
        conn.push(frame)
    assert _queued(conn) == [b"1"] and conn.backlog == 2
    socket.writable = True
    conn.push(b"4")  # behind the backlog, not before it
    assert _queued(conn) == [b"1"]
    conn.flush()
    assert _queued(conn) == [b"1", b"2", b"3", b"4"] and conn.backlog == 0
    conn.push(b"5")
    assert _queued(conn)[-1] == b"5"


async def test_a_full_backlog_disconnects_the_slow_socket_only() -> None:
    sent: list[str] = []
    slow, fine = _conn("alice", sent), _conn("bob", [])
    assert isinstance(slow.socket, FakeSocket)
    slow.socket.writable = False
    for i in range(11):
        slow.push(f"f{i}".encode())
        fine.push(f"f{i}".encode())
    assert slow.too_slow and slow.backlog == 0  # what waited is dropped
    assert sent == ["closed 1013"]
    assert len(_queued(fine)) == 11 and not fine.too_slow
    slow.socket.writable = True
    slow.flush()
    slow.push(b"late")
    assert sent == ["closed 1013"]


async def test_typing_goes_only_to_sockets_viewing_the_conversation_and_never_to_the_typist() -> None:
    from projections.delivery import typing_pushes

    hub, _ = await _hub(groups={"alice": {"g:1"}, "bob": {"g:1"}, "carol": {"g:1"}})
    alice, bob_viewing, bob_elsewhere, carol = (_conn(u, []) for u in ("alice", "bob", "bob", "carol"))
    for c in (alice, bob_viewing, bob_elsewhere, carol):
        await hub.register(c)
    alice.view = bob_viewing.view = "g:1"
    [group_push] = typing_pushes("g:1", "alice", "start")
    assert hub.deliver_to_group(group_push.payload) == 1
    assert _queued(bob_viewing) and not _queued(bob_elsewhere) and not _queued(alice) and not _queued(carol)
    [dm_push] = typing_pushes("dm:alice:bob", "alice", "stop")
    assert dm_push.channel == keys.user_channel("bob")
    bob_elsewhere.view = "dm:alice:bob"
    assert hub.deliver_to_user("bob", dm_push.payload) == 1
    assert b'"state":"stop"' in _queued(bob_elsewhere)[0]


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    from query_api.hub import TokenBucket

    now = [0.0]
    bucket = TokenBucket(rate_per_s=2, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5
    assert bucket.take() and not bucket.take()


class FlakyPubSub(FakePubSub):
    """get_message fails once, as redis-py does when Redis went away."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = True

    async def get_message(self, ignore_subscribe_messages: bool = False, timeout: float | None = 0) -> Any:  # noqa: ASYNC109 - redis-py's signature
        await asyncio.sleep(0)
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("Connection closed by server")
        await asyncio.sleep(0.01)
        return None


async def test_a_lost_pubsub_connection_sends_every_socket_to_catch_up() -> None:
    # Found by the fault suite: after a Redis restart the listener resubscribed, but what was
    # published meanwhile was gone and the sockets never knew; clients that are told to
    # reconnect catch up from the read models.
    pubsub = FlakyPubSub()
    hub, _ = await _hub(pubsub=pubsub)
    sent_a: list[str] = []
    sent_b: list[str] = []
    a, b = _conn("alice", sent_a), _conn("bob", sent_b)
    await hub.register(a)
    await hub.register(b)
    listener = asyncio.create_task(hub.listen())
    await asyncio.sleep(0.3)
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    assert sent_a == ["closed 1013"] and sent_b == ["closed 1013"]


async def test_a_silent_pubsub_reconnect_also_sends_sockets_to_catch_up() -> None:
    # redis-py reconnects and resubscribes by itself within its retries, without raising.
    hub, _ = await _hub()
    sent: list[str] = []
    a = _conn("alice", sent)
    await hub.register(a)
    await hub.resubscribed(None)
    assert sent == ["closed 1013"]


def _presence_payload(at: int, user: str, state: str) -> bytes:
    frame = f'{{"type":"presence","user_id":"{user}","state":"{state}","last_seen":null}}'
    return b"p" + str(at).encode() + b"\0" + frame.encode()


async def test_presence_changes_reach_watchers_only_and_late_ones_are_dropped() -> None:
    hub, pubsub = await _hub()
    watcher, bystander = _conn("bob", []), _conn("carol", [])
    for conn in (watcher, bystander):
        await hub.register(conn)
    assert await hub.watch(watcher, {"alice"}) == {"alice"}
    assert keys.presence_channel("alice") in pubsub.channels
    hub.watch_settled(watcher, [("alice", 10, b"snapshot")])
    assert hub.deliver_presence("alice", _presence_payload(20, "alice", "online")) == 1
    # appended out of order by two gateways: older than what was delivered, dropped
    assert hub.deliver_presence("alice", _presence_payload(15, "alice", "offline")) == 0
    assert hub.deliver_presence("alice", _presence_payload(30, "alice", "away")) == 1
    frames = _queued(watcher)
    assert frames[0] == b"snapshot"
    assert [b'"online"' in f for f in frames[1:] if f] == [True, False]
    assert _queued(bystander) == []


async def test_a_change_that_arrives_while_the_snapshot_is_read_is_held_then_sent_if_newer() -> None:
    hub, _ = await _hub()
    watcher = _conn("bob", [])
    await hub.register(watcher)
    await hub.watch(watcher, {"alice", "dave"})
    # both arrive before the snapshot: alice's is stale (older than the snapshot), dave's newer
    hub.deliver_presence("alice", _presence_payload(5, "alice", "offline"))
    hub.deliver_presence("dave", _presence_payload(50, "dave", "online"))
    assert _queued(watcher) == []
    hub.watch_settled(watcher, [("alice", 10, b"alice-now"), ("dave", 40, b"dave-then")])
    frames = _queued(watcher)
    assert frames[:2] == [b"alice-now", b"dave-then"]
    assert b'"online"' in (frames[2] or b"") and len(frames) == 3


async def test_watch_replaces_the_list_and_unsubscribes_what_nobody_here_watches() -> None:
    hub, pubsub = await _hub()
    a, b = _conn("bob", []), _conn("carol", [])
    for conn in (a, b):
        await hub.register(conn)
    await hub.watch(a, {"alice", "dave"})
    await hub.watch(b, {"alice"})
    assert await hub.watch(a, {"erin"}) == {"erin"}
    assert keys.presence_channel("dave") not in pubsub.channels
    assert keys.presence_channel("alice") in pubsub.channels  # b still watches
    await hub.unregister(b)
    assert keys.presence_channel("alice") not in pubsub.channels
    hub.watch_settled(a, [])
    assert hub.deliver_presence("alice", _presence_payload(1, "alice", "online")) == 0
    assert hub.deliver_presence("erin", _presence_payload(1, "erin", "online")) == 1


async def test_a_failed_watch_subscribe_changes_nothing() -> None:
    hub, pubsub = await _hub()
    watcher = _conn("bob", [])
    await hub.register(watcher)
    pubsub.fail_subscribe = 1
    with pytest.raises(Unavailable):
        await hub.watch(watcher, {"alice"})
    assert watcher.watching == frozenset()
    assert hub.deliver_presence("alice", _presence_payload(1, "alice", "online")) == 0


class GatedPubSub(FakePubSub):
    """Records every command; each waits a random moment (a Redis round trip), and a
    subscribe can be made to fail."""

    def __init__(self, rng: Any = None) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.rng = rng

    async def _trip(self) -> None:
        await asyncio.sleep(self.rng.random() / 1000 if self.rng else 0.001)

    async def subscribe(self, *channels: str) -> None:
        self.calls.append(("subscribe", channels))
        await self._trip()
        await super().subscribe(*channels)

    async def unsubscribe(self, *channels: str) -> None:
        self.calls.append(("unsubscribe", channels))
        await self._trip()
        await super().unsubscribe(*channels)


async def test_registrations_that_arrive_together_share_one_subscribe() -> None:
    pubsub = GatedPubSub()
    hub, _ = await _hub(pubsub=pubsub)
    pubsub.calls.clear()
    conns = [_conn(f"u{i}", []) for i in range(200)]
    await asyncio.gather(*(hub.register(c) for c in conns))
    subscribes = [c for kind, c in pubsub.calls if kind == "subscribe"]
    # the first flush takes whoever was there; everyone else waits for the second
    assert len(subscribes) <= 2, [len(s) for s in subscribes]
    assert sum(len(s) for s in subscribes) == 200
    assert {keys.user_channel(f"u{i}") for i in range(200)} <= pubsub.channels
    pubsub.calls.clear()
    await asyncio.gather(*(hub.unregister(c) for c in conns))
    assert [kind for kind, _ in pubsub.calls] in (["unsubscribe"], ["unsubscribe", "unsubscribe"])
    assert not any(ch.startswith(keys.user_channel("")) for ch in pubsub.channels)


async def _connects_and_closes_of_one_user(rng: Any) -> None:
    pubsub = GatedPubSub(rng)
    hub, _ = await _hub(pubsub=pubsub)
    channel = keys.user_channel("alice")
    live: list[Connection] = []

    async def connect() -> None:
        conn = _conn("alice", [])
        await hub.register(conn)
        # registered means subscribed: a push published now reaches this socket
        assert channel in pubsub.channels
        live.append(conn)

    async def close() -> None:
        await asyncio.sleep(rng.random() / 500)
        if live:
            await hub.unregister(live.pop(rng.randrange(len(live))))

    await asyncio.gather(*(connect() if rng.random() < 0.5 else close() for _ in range(40)))
    await asyncio.sleep(0.01)  # the last flush
    assert (channel in pubsub.channels) == bool(live), (len(live), pubsub.calls)
    assert hub.connections == len(live)
    if live:
        assert hub.deliver_to_user("alice", MESSAGE + b"x") == len(live)
    for conn in list(live):
        await hub.unregister(conn)
    assert channel not in pubsub.channels


async def test_concurrent_connects_and_closes_of_one_user_end_subscribed_exactly_when_connected() -> None:
    import random

    rng = random.Random(7)
    for _ in range(30):
        await _connects_and_closes_of_one_user(rng)


async def test_a_failed_batch_refuses_every_socket_in_it_even_a_second_one_of_the_user() -> None:
    pubsub = GatedPubSub()
    hub, _ = await _hub(pubsub=pubsub)
    pubsub.fail_subscribe = 1
    first, second, other = _conn("alice", []), _conn("alice", []), _conn("bob", [])
    results = await asyncio.gather(
        hub.register(first), hub.register(second), hub.register(other), return_exceptions=True
    )
    assert all(isinstance(r, Unavailable) for r in results), results
    assert hub.connections == 0 and not any(c.startswith(keys.user_channel("")) for c in pubsub.channels)
    again = _conn("alice", [])
    await hub.register(again)
    assert hub.deliver_to_user("alice", MESSAGE + b"x") == 1


async def test_a_user_who_comes_back_before_the_flush_costs_no_unsubscribe() -> None:
    pubsub = GatedPubSub()
    hub, _ = await _hub(pubsub=pubsub)
    a = _conn("alice", [])
    await hub.register(a)
    pubsub.calls.clear()
    b = _conn("alice", [])
    await asyncio.gather(hub.unregister(a), hub.register(b))
    assert pubsub.calls == []
    assert hub.deliver_to_user("alice", MESSAGE + b"x") == 1


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()  # Sanic cancels the handler when the client goes during the registration
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_registration_cancelled_while_the_groups_load_leaves_nothing_behind() -> None:
    """Found by the fault suite (SDK load, Kafka scenario): a client that gave up on a slow
    registration left its socket in the hub, so the user's later sockets on that gateway never
    loaded the user's groups and got no large-group pushes (only by sync)."""
    gate = asyncio.Event()

    async def groups_of(user_id: str) -> set[str]:
        await gate.wait()
        return {"g:1"}

    hub = Hub(FakePubSub(), groups_of, shards=4)
    await hub.start()
    task = asyncio.create_task(hub.register(_conn("alice", [])))
    await asyncio.sleep(0.01)
    await _cancelled(task)
    assert hub.connections == 0
    gate.set()
    again = _conn("alice", [])
    await hub.register(again)
    assert hub.connections == 1
    assert hub.deliver_to_group(b"mg:1\0hello") == 1 and _queued(again) == [b"hello"]


def _counted() -> float:
    return REGISTRY.get_sample_value("tidings_ws_connections") or 0.0


async def test_a_socket_is_counted_from_when_it_can_receive_pushes_to_when_it_is_gone() -> None:
    """The e2e metrics test once read one connection with two sockets open: the receiver had
    its message while its registration still waited for its groups, and was counted only
    after that. A refused or cancelled registration leaves the count as it found it."""
    gate = asyncio.Event()

    async def groups_of(user_id: str) -> set[str]:
        await gate.wait()
        return set()

    pubsub = FakePubSub()
    hub = Hub(pubsub, groups_of, shards=4)
    await hub.start()
    start = _counted()
    first = _conn("alice", [])
    registering = asyncio.create_task(hub.register(first))
    await asyncio.sleep(0.01)
    assert not registering.done()
    assert hub.deliver_to_user("alice", MESSAGE + b"x") == 1  # it receives already
    assert _counted() == start + 1
    pubsub.fail_subscribe = 1
    with pytest.raises(Unavailable):
        await hub.register(_conn("carol", []))
    assert _counted() == start + 1
    cancelled = asyncio.create_task(hub.register(_conn("bob", [])))
    await asyncio.sleep(0.01)
    await _cancelled(cancelled)
    assert _counted() == start + 1
    gate.set()
    await registering
    assert _counted() == start + 1
    await hub.unregister(first)
    assert _counted() == start


async def test_a_second_socket_gets_the_groups_though_the_first_registration_was_cancelled() -> None:
    gate = asyncio.Event()

    async def groups_of(user_id: str) -> set[str]:
        await gate.wait()
        return {"g:1"}

    hub = Hub(FakePubSub(), groups_of, shards=4)
    await hub.start()
    first = asyncio.create_task(hub.register(_conn("alice", [])))
    await asyncio.sleep(0.01)
    second_conn = _conn("alice", [])
    second = asyncio.create_task(hub.register(second_conn))
    await asyncio.sleep(0.01)
    assert not second.done()  # registered only once the user's groups are loaded
    await _cancelled(first)
    gate.set()
    await asyncio.wait_for(second, 5)
    assert hub.connections == 1
    assert hub.deliver_to_group(b"mg:1\0hello") == 1 and _queued(second_conn) == [b"hello"]


class BlockingPubSub(FakePubSub):
    """A pub/sub whose reads block until a message is queued, recording each read's timeout,
    with redis-py's ``check_health``."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.timeouts: list[float | None] = []
        self.health_checks = 0

    async def get_message(self, ignore_subscribe_messages: bool = False, timeout: float | None = 0) -> Any:  # noqa: ASYNC109 - redis-py's signature
        self.timeouts.append(timeout)
        return await self.messages.get()

    async def check_health(self) -> None:
        self.health_checks += 1


async def test_the_listener_blocks_without_a_timer_and_checks_health_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A read with a timeout arms and cancels a timer per message (issue #19); the periodic
    # health check (a PING after a quiet while, in redis-py) replaces what its wake-ups did.
    import query_api.hub as hub_module

    monkeypatch.setattr(hub_module, "HEALTH_CHECK_S", 0.01)
    pubsub = BlockingPubSub()
    hub, _ = await _hub(pubsub=pubsub)
    alice = _conn("alice", [])
    await hub.register(alice)
    listener = asyncio.create_task(hub.listen())
    channel = keys.user_channel("alice")
    for n in range(3):
        pubsub.messages.put_nowait(
            {"type": "message", "channel": channel.encode(), "data": MESSAGE + b"m%d" % n}
        )
    await asyncio.sleep(0.1)
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    assert _queued(alice) == [b"m0", b"m1", b"m2"]
    assert pubsub.timeouts and set(pubsub.timeouts) == {None}
    assert pubsub.health_checks >= 3


# --- routes: deliveries published once per gateway (projections.delivery.routed) -----------


class FakeRoutes:
    """The gateway's route entries, kept in a set; ``gate`` holds adds until released."""

    channel = keys.gateway_channel(7)

    def __init__(self, ttl_s: float = 60.0) -> None:
        self.ttl_s = ttl_s
        self.users: set[str] = set()
        self.pushed: list[list[str]] = []
        self.fail_add = 0
        self.gate: asyncio.Event | None = None

    async def subscribe(self, *user_ids: str) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_add:
            self.fail_add -= 1
            raise ConnectionError("redis down")
        self.users |= set(user_ids)

    async def unsubscribe(self, *user_ids: str) -> None:
        self.users -= set(user_ids)

    async def add(self, user_ids: Any) -> None:
        if self.fail_add:
            raise ConnectionError("redis down")
        users = list(user_ids)
        self.pushed.append(sorted(users))
        self.users |= set(users)


async def _routed_hub(
    routes: FakeRoutes, pubsub: FakePubSub | None = None, groups: dict[str, set[str]] | None = None
) -> tuple[Hub, FakePubSub]:
    pubsub = pubsub or FakePubSub()

    async def groups_of(user_id: str) -> set[str]:
        return set((groups or {}).get(user_id, set()))

    hub = Hub(pubsub, groups_of, shards=4, routes=routes)
    await hub.start()
    return hub, pubsub


async def test_the_gateway_listens_on_its_channel_and_routes_each_payload_to_its_recipients_here() -> None:
    routes = FakeRoutes()
    pubsub = BlockingPubSub()
    hub, _ = await _routed_hub(routes, pubsub, groups={})
    assert routes.channel in pubsub.channels
    alice1, alice2, bob, carol = (_conn(u, []) for u in ("alice", "alice", "bob", "carol"))
    for c in (alice1, alice2, bob, carol):
        await hub.register(c)
    listener = asyncio.create_task(hub.listen())
    gw = routes.channel.encode()
    pubsub.messages.put_nowait(
        {"type": "message", "channel": gw, "data": routed(["alice", "bob"], MESSAGE + b"m1")}
    )
    # a user with no socket here any more (a route entry not yet removed): nothing, no error
    pubsub.messages.put_nowait(
        {"type": "message", "channel": gw, "data": routed(["gone", "carol"], MESSAGE + b"m2")}
    )
    # the join reaches the hub's group bookkeeping as it does on the user's channel
    pubsub.messages.put_nowait({"type": "message", "channel": gw, "data": routed(["bob"], JOINED + b"g1\0j")})
    await asyncio.sleep(0.05)
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    assert _queued(alice1) == _queued(alice2) == [b"m1"]
    assert _queued(bob) == [b"m1", b"j"] and _queued(carol) == [b"m2"]
    assert hub.deliver_to_group(MESSAGE + b"g1\0gm") == 1 and _queued(bob)[-1] == b"gm"


async def test_a_users_route_lives_from_their_first_socket_here_to_their_last() -> None:
    routes = FakeRoutes()
    hub, pubsub = await _routed_hub(routes)
    a1, a2 = _conn("alice", []), _conn("alice", [])
    await hub.register(a1)
    assert routes.users == {"alice"} and keys.user_channel("alice") in pubsub.channels
    await hub.register(a2)
    await hub.unregister(a1)
    assert routes.users == {"alice"}
    await hub.unregister(a2)
    assert routes.users == set() and keys.user_channel("alice") not in pubsub.channels


async def test_a_socket_counts_as_registered_only_once_its_route_is_in_redis() -> None:
    # The switch: a delivery after the registration must find the route (the deliver stage's
    # script reads it and publishes in one step), so the registration waits for the add.
    routes = FakeRoutes()
    routes.gate = asyncio.Event()
    hub, pubsub = await _routed_hub(routes)
    registering = asyncio.create_task(hub.register(_conn("alice", [])))
    await asyncio.sleep(0.02)
    assert keys.user_channel("alice") in pubsub.channels  # subscribed; route not added yet
    assert not registering.done()
    routes.gate.set()
    await registering
    assert routes.users == {"alice"}


async def test_a_failed_route_add_refuses_the_socket_and_leaves_nothing_behind() -> None:
    routes = FakeRoutes()
    routes.fail_add = 1
    hub, pubsub = await _routed_hub(routes)
    with pytest.raises(Unavailable):
        await hub.register(_conn("alice", []))
    await asyncio.sleep(0.01)
    assert hub.connections == 0 and routes.users == set()
    assert keys.user_channel("alice") not in pubsub.channels
    await hub.register(_conn("alice", []))  # asked again, it is added
    assert routes.users == {"alice"}


async def test_route_entries_are_pushed_forward_each_third_of_their_ttl_and_at_once_after_a_reconnect() -> (
    None
):
    routes = FakeRoutes(ttl_s=0.3)
    hub, _ = await _routed_hub(routes)
    await hub.register(_conn("alice", []))
    await hub.register(_conn("bob", []))
    listener = asyncio.create_task(hub.listen())
    await asyncio.sleep(0.25)  # one period (0.1 s), two at most
    assert routes.pushed and routes.pushed[0] == ["alice", "bob"]
    pushes = len(routes.pushed)
    routes.users.clear()  # Redis came back empty
    await hub.resubscribed(None)
    await asyncio.sleep(0.02)
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    assert len(routes.pushed) == pushes + 1 and routes.users == {"alice", "bob"}


async def test_sockets_catch_up_when_their_route_entries_may_have_expired() -> None:
    # Entries not pushed forward for a TTL expire: a user with sockets on another gateway too
    # would then be routed there only, so the sockets here are told to reconnect and sync.
    routes = FakeRoutes(ttl_s=0.3)
    hub, _ = await _routed_hub(routes)
    sent: list[str] = []
    await hub.register(_conn("alice", sent))
    routes.fail_add = 1_000
    listener = asyncio.create_task(hub.listen())
    await asyncio.sleep(0.15)
    assert sent == []  # one failed push forward: the entries still live
    await asyncio.sleep(0.3)
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    assert sent == ["closed 1013"]
