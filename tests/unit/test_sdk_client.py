"""The Python SDK's own logic against a fake server (a fake WebSocket and httpx's MockTransport):
backoff and jitter, dedup and order across a resume, the outbox's resends, reconnect frames,
heartbeats, typed errors, typing's auto-stop, callbacks and the cursor stores."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from tidings_client import (
    Backoff,
    ConnectionState,
    FileCursorStore,
    Forbidden,
    MemoryCursorStore,
    Message,
    MessageEvent,
    RateLimited,
    TidingsClient,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from tidings_client.errors import error_for
from tidings_client.transport import HandshakeRejected, Transport, TransportClosed

from tests.polling import until

ALICE = "eyJhbGciOiJIUzI1NiJ9." + "eyJzdWIiOiJhbGljZSIsImRldiI6InBob25lIiwiZXhwIjo5OTk5OTk5OTk5fQ" + ".sig"
CID = "dm:alice:bob"


def message(mid: int, cid: str = CID, sender: str = "bob") -> dict[str, Any]:
    return {
        "message_id": str(mid),
        "conversation_id": cid,
        "sender_id": sender,
        "client_msg_id": f"c{mid}",
        "kind": "text",
        "body": f"m{mid}",
        "media": None,
        "ts": mid,
    }


class FakeSocket:
    def __init__(self, server: FakeServer, url: str) -> None:
        self.server, self.url = server, url
        self.queue: asyncio.Queue[str | TransportClosed] = asyncio.Queue()
        self.frames: list[dict[str, Any]] = []
        self.closed = False

    def push(self, frame: dict[str, Any]) -> None:
        self.queue.put_nowait(json.dumps(frame))

    def drop(self, code: int | None) -> None:
        self.closed = True
        self.queue.put_nowait(TransportClosed(code, "fake close"))

    async def send(self, text: str) -> None:
        if self.closed:
            raise TransportClosed(None, "gone")
        frame = json.loads(text)
        self.frames.append(frame)
        self.server.on_frame(self, frame)

    async def recv(self) -> str:
        item = await self.queue.get()
        if isinstance(item, TransportClosed):
            self.queue.put_nowait(item)
            raise item
        return item

    async def close(self) -> None:
        if not self.closed:
            self.drop(1000)


class FakeServer:
    """Speaks enough of the protocol: pong, ack (idempotent by client_msg_id), /v1/sync pages."""

    def __init__(self) -> None:
        self.sockets: list[FakeSocket] = []
        self.pong = True
        self.ack = True
        self.stored: dict[str, str] = {}  # client_msg_id -> message_id
        self.refuse: Callable[[dict[str, Any]], dict[str, Any] | None] = lambda frame: None
        self.reject_upgrade: HandshakeRejected | None = None
        self.sync_pages: list[dict[str, Any]] = []
        self.sync_calls: list[str | None] = []
        self.on_sync: Callable[[], None] = lambda: None
        self.next_id = 1000

    @property
    def socket(self) -> FakeSocket:
        return self.sockets[-1]

    async def connect(self, url: str, headers: Mapping[str, str]) -> Transport:
        assert headers["Authorization"] == f"Bearer {ALICE}"
        if self.reject_upgrade is not None:
            raise self.reject_upgrade
        sock = FakeSocket(self, url)
        self.sockets.append(sock)
        return sock

    def on_frame(self, sock: FakeSocket, frame: dict[str, Any]) -> None:
        if frame["type"] == "ping" and self.pong:
            sock.push({"type": "pong", "ref": frame.get("ref")})
        elif frame["type"] == "send":
            refusal = self.refuse(frame)
            if refusal is not None:
                sock.push({"type": "error", "ref": frame["ref"], **refusal})
                return
            cmid = frame["client_msg_id"]
            if cmid not in self.stored:
                self.next_id += 1
                self.stored[cmid] = str(self.next_id)
            if self.ack:
                sock.push(
                    {
                        "type": "ack",
                        "ref": frame["ref"],
                        "client_msg_id": cmid,
                        "message_id": self.stored[cmid],
                        "conversation_id": frame["conversation_id"],
                        "ts": 1,
                    }
                )

    async def http(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/sync":
            self.sync_calls.append(request.url.params.get("since"))
            self.on_sync()
            page = self.sync_pages.pop(0) if self.sync_pages else {}
            body = {"messages": [], "receipts": [], "conversations": [], "has_more": False, **page}
            body.setdefault("cursor", f"c{len(self.sync_calls)}")
            return httpx.Response(200, json=body)
        if request.url.path.endswith("/members"):
            return httpx.Response(403, json={"error": {"code": "forbidden", "message": "not a member"}})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no route"}})

    def client(self, urls: str | list[str] = "http://gw1", **options: Any) -> TidingsClient:
        options.setdefault("heartbeat_s", 5.0)
        options.setdefault("backoff", Backoff(0.01, 0.02))
        options.setdefault("resync_after_s", ())
        return TidingsClient(
            urls, ALICE, connector=self.connect, http_transport=httpx.MockTransport(self.http), **options
        )


# ---- backoff ---------------------------------------------------------------------------------


def test_backoff_doubles_from_one_second_to_a_thirty_second_cap_with_full_jitter() -> None:
    top = Backoff(rng=lambda: 1.0)
    assert [top.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    bottom = Backoff(rng=lambda: 0.0)
    assert [bottom.next_delay() for _ in range(3)] == [0, 0, 0]
    real = Backoff()
    delays = [real.next_delay() for _ in range(200)]
    assert all(0 <= d <= min(30, 2**i) for i, d in enumerate(delays))
    assert len({round(d, 6) for d in delays[10:]}) > 150  # jittered, not one fixed value
    real.reset()
    assert real.ceiling() == 1.0
    with pytest.raises(ValueError, match="base_s"):
        Backoff(0, 1)


# ---- errors ----------------------------------------------------------------------------------


def test_each_protocol_code_has_its_typed_error() -> None:
    assert isinstance(error_for("forbidden", "no"), Forbidden)
    assert isinstance(error_for(None, status=413), TooLarge)
    limited = error_for("rate_limited", "slow down", status=429, retry_after=3)
    assert isinstance(limited, RateLimited) and limited.retry_after == 3 and limited.status == 429
    odd = error_for("teapot", "?")
    assert odd.code == "teapot" and type(odd).__name__ == "ServerError"


# ---- connection, resume, dedup and order -----------------------------------------------------


async def test_a_resume_yields_every_message_once_in_order_and_stores_the_cursor() -> None:
    server = FakeServer()
    store = MemoryCursorStore("c0")

    def pushes_during_sync() -> None:
        if len(server.sync_calls) == 1:
            server.socket.push({"type": "message", "message": message(40)})
            server.socket.push({"type": "message", "message": message(30)})  # also in the page

    server.on_sync = pushes_during_sync
    server.sync_pages = [
        {"messages": [message(20), message(10)], "has_more": True, "cursor": "c1"},
        {"messages": [message(30)], "cursor": "c2"},
    ]
    client = server.client(cursor_store=store)
    seen: list[str] = []
    client.on(MessageEvent)(lambda e: seen.append(e.message.message_id))
    async with client:
        assert server.sync_calls == ["c0", "c1"] and store.cursor == "c2"
        assert seen == ["10", "20", "30", "40"]
        server.socket.push({"type": "message", "message": message(40)})
        server.socket.push({"type": "message", "message": message(50)})
        await until(lambda: seen[-1] == "50")
        # A dropped connection: the next one resumes from the stored cursor.
        server.sync_pages = [{"messages": [message(50), message(60)], "cursor": "c3"}]
        server.socket.drop(1013)
        await until(lambda: len(server.sockets) == 2 and client.connected)
        assert server.sync_calls[-1] == "c2" and store.cursor == "c3"
        assert seen == ["10", "20", "30", "40", "50", "60"]


async def test_the_outbox_resends_unacked_sends_with_the_same_client_msg_id() -> None:
    server = FakeServer()
    server.ack = False
    async with server.client() as client:
        sending = asyncio.create_task(client.send(CID, "hi"))
        await until(lambda: any(f["type"] == "send" for f in server.socket.frames))
        assert client.pending == [server.socket.frames[-1]["client_msg_id"]]
        server.ack = True
        server.socket.drop(None)  # the ack never came: the connection died
        sent = await asyncio.wait_for(sending, 5)
    sends = [f for s in server.sockets for f in s.frames if f["type"] == "send"]
    assert len(server.sockets) == 2 and len(sends) == 2
    assert sends[0]["client_msg_id"] == sends[1]["client_msg_id"] == sent.client_msg_id
    assert sends[0]["ref"] != sends[1]["ref"]
    assert sent.message_id == server.stored[sent.client_msg_id] and len(server.stored) == 1
    assert client.pending == []


async def test_sends_made_while_disconnected_go_in_order_once_connected() -> None:
    server = FakeServer()
    server.pong = False  # the first connection never gets going
    client = server.client(heartbeat_s=0.05)
    connecting = asyncio.create_task(client.connect(timeout=5))
    await until(lambda: bool(server.sockets))
    sends = [asyncio.create_task(client.send(CID, f"m{i}")) for i in range(3)]
    await asyncio.sleep(0.01)
    server.pong = True
    await connecting
    results = await asyncio.gather(*sends)
    assert [m.body for m in results] == ["m0", "m1", "m2"]
    assert [int(m.message_id) for m in results] == sorted(int(m.message_id) for m in results)
    await client.close()


async def test_refusals_raise_typed_errors_and_unavailable_is_retried() -> None:
    server = FakeServer()
    refusals: Iterator[dict[str, Any]] = iter(
        [
            {"code": "rate_limited", "message": "slow down", "retry_after": 2},
            {"code": "forbidden", "message": "not a member"},
            {"code": "unavailable", "message": "kafka down"},
        ]
    )

    def refuse(frame: dict[str, Any]) -> dict[str, Any] | None:
        return next(refusals, None)

    server.refuse = refuse
    async with server.client(unavailable_retry_s=0.01) as client:
        with pytest.raises(RateLimited) as limited:
            await client.send(CID, "a")
        assert limited.value.retry_after == 2.0 and limited.value.code == "rate_limited"
        with pytest.raises(Forbidden):
            await client.send(CID, "b")
        ok = await client.send(CID, "c", client_msg_id="retry-me")  # unavailable, then accepted
        attempts = [f for f in server.socket.frames if f.get("client_msg_id") == "retry-me"]
        assert len(attempts) == 2 and ok.client_msg_id == "retry-me"
        with pytest.raises(Forbidden) as http:
            await client.members(CID)
        assert http.value.status == 403


async def test_a_send_answered_unavailable_again_and_again_waits_longer_each_time() -> None:
    """In the fault suite's Cassandra outage every pending send was retried every second:
    301,666 retries for 4,500 sends, on a gateway that was already degraded."""
    server = FakeServer()
    at: list[float] = []

    def refuse(frame: dict[str, Any]) -> dict[str, Any] | None:
        at.append(asyncio.get_running_loop().time())
        return {"code": "unavailable", "message": "cassandra down"} if len(at) <= 5 else None

    server.refuse = refuse
    async with server.client(unavailable_retry_s=0.04, unavailable_retry_cap_s=0.16) as client:
        sent = await asyncio.wait_for(client.send(CID, "later", client_msg_id="patient"), 10)
    assert sent.client_msg_id == "patient" and len(at) == 6
    gaps = [b - a for a, b in itertools.pairwise(at)]
    # Each wait is half to all of its ceiling: 0.04 s doubling up to the 0.16 s cap.
    for gap, ceiling in zip(gaps, [0.04, 0.08, 0.16, 0.16, 0.16], strict=True):
        assert gap >= ceiling / 2 - 0.005, (gaps, ceiling)


async def test_a_reconnect_frame_sets_the_wait_and_moves_to_the_next_gateway() -> None:
    server = FakeServer()
    async with server.client(["http://gw1", "http://gw2"]) as client:
        states: list[ConnectionState] = []
        client.on(ConnectionState)(states.append)
        assert server.socket.url == "ws://gw1/v1/ws"
        server.socket.push({"type": "reconnect", "after_ms": 300})
        server.socket.drop(1012)
        await until(lambda: len(server.sockets) == 2 and client.connected)
        assert server.socket.url == "ws://gw2/v1/ws" and client.url == "http://gw2"
        assert states[0].state == "disconnected" and states[0].code == 1012
        assert states[0].reason == "reconnect frame" and states[0].retry_in_s == 0.3
        assert states[1].state == "connected"


async def test_a_missing_pong_closes_the_connection_and_the_client_reconnects() -> None:
    server = FakeServer()
    async with server.client(heartbeat_s=0.05) as client:
        server.pong = False
        await until(lambda: server.sockets[0].closed)
        server.pong = True  # (a reconnect quicker than this line also goes unanswered: >= 2)
        await until(lambda: len(server.sockets) >= 2 and client.connected)
        assert client.connected and not server.socket.closed


async def test_a_refused_token_stops_the_client_with_unauthorized() -> None:
    server = FakeServer()
    server.reject_upgrade = HandshakeRejected(
        401, {}, json.dumps({"error": {"code": "unauthorized", "message": "expired"}}).encode()
    )
    client = server.client()
    with pytest.raises(Unauthorized) as refused:
        await client.connect(timeout=5)
    assert refused.value.status == 401 and "expired" in str(refused.value)


async def test_no_gateway_within_the_timeout_is_unavailable() -> None:
    async def nowhere(url: str, headers: Mapping[str, str]) -> Transport:
        raise OSError("connection refused")

    client = TidingsClient("http://gw1", ALICE, connector=nowhere, backoff=Backoff(0.01, 0.02))
    with pytest.raises(Unavailable):
        await client.connect(timeout=0.2)


async def test_typing_sends_one_start_then_stops_by_itself_or_on_send() -> None:
    server = FakeServer()
    async with server.client(typing_idle_s=0.1, typing_refresh_s=10) as client:
        for _ in range(3):
            await client.typing(CID)
        await until(
            lambda: [f["state"] for f in server.socket.frames if f["type"] == "typing"] == ["start", "stop"]
        )
        await client.typing(CID)
        await client.send(CID, "done typing")
        kinds = [(f["type"], f.get("state")) for f in server.socket.frames if f["type"] in ("typing", "send")]
        assert kinds[-3:] == [("typing", "start"), ("typing", "stop"), ("send", None)]
        await asyncio.sleep(0.2)
        assert [f["state"] for f in server.socket.frames if f["type"] == "typing"] == ["start", "stop"] * 2


async def test_view_watch_and_presence_are_sent_again_on_a_new_connection() -> None:
    server = FakeServer()
    async with server.client() as client:
        await client.view(CID)
        await client.watch(["bob"])
        await client.set_presence("away")
        server.socket.drop(1013)
        await until(lambda: len(server.sockets) == 2 and client.connected)
        again = [f["type"] for f in server.socket.frames if f["type"] != "ping"]
        assert again == ["presence", "view", "watch"]


async def test_callbacks_and_streams_get_events_and_a_failing_callback_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = FakeServer()
    async with server.client() as client:
        plain: list[Message] = []
        awaited: list[Message] = []

        def broken(event: MessageEvent) -> None:
            raise RuntimeError("app bug")

        async def slow(event: MessageEvent) -> None:
            await asyncio.sleep(0)
            awaited.append(event.message)

        client.on(MessageEvent)(broken)
        client.on(MessageEvent)(lambda e: plain.append(e.message))
        client.on(MessageEvent)(slow)
        stream = client.events(MessageEvent)
        with caplog.at_level(logging.ERROR, logger="tidings_client"):
            server.socket.push({"type": "message", "message": message(7)})
            assert (await stream.next(timeout=5)).message.message_id == "7"
            await until(lambda: len(awaited) == 1)
        assert [m.message_id for m in plain] == ["7"]
        assert "app bug" in caplog.text
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


async def test_the_file_cursor_store_keeps_the_cursor_across_runs(tmp_path: Path) -> None:
    store = FileCursorStore(tmp_path / "device" / "cursor")
    assert await store.load() is None
    await store.save("1.abc")
    assert await FileCursorStore(tmp_path / "device" / "cursor").load() == "1.abc"


async def test_a_malformed_frame_is_logged_and_the_connection_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = FakeServer()
    async with server.client() as client:
        stream = client.events(MessageEvent)
        with caplog.at_level(logging.WARNING, logger="tidings_client"):
            server.socket.push({"type": "typing", "conversation_id": CID})  # no user_id, no state
            server.socket.push({"type": "message", "message": {"body": "no ids"}})
            server.socket.push({"type": "message", "message": message(9)})
            assert (await stream.next(timeout=5)).message.message_id == "9"
        assert caplog.text.count("malformed") == 2
        assert len(server.sockets) == 1 and client.connected


async def test_a_token_refused_by_the_resume_sync_stops_the_client() -> None:
    server = FakeServer()
    async with server.client() as client:
        original = server.http

        async def expired(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/v1/sync":
                return httpx.Response(401, json={"error": {"code": "unauthorized", "message": "expired"}})
            return await original(request)

        await client._http.aclose()
        client._http = httpx.AsyncClient(transport=httpx.MockTransport(expired))
        server.ack = False
        pending = asyncio.create_task(client.send(CID, "never"))
        await until(lambda: any(f["type"] == "send" for f in server.socket.frames))
        server.socket.drop(1012)
        with pytest.raises(Unauthorized):
            await asyncio.wait_for(pending, 5)
        with pytest.raises(Unauthorized):
            await client.wait_connected()
        assert len(server.sockets) == 2  # it tried once more, and stopped


async def test_a_copy_of_a_pending_send_answers_it_and_is_not_an_event() -> None:
    server = FakeServer()
    server.ack = False
    async with server.client() as client:
        seen: list[str] = []
        client.on(MessageEvent)(lambda e: seen.append(e.message.message_id))
        sending = asyncio.create_task(client.send(CID, "mine", client_msg_id="own-1"))
        await until(lambda: any(f["type"] == "send" for f in server.socket.frames))
        # This server pushes a message to the sender's own device too, here before the ack.
        own = {**message(77, sender="alice"), "client_msg_id": "own-1", "body": "mine"}
        server.socket.push({"type": "message", "message": own})
        sent = await asyncio.wait_for(sending, 5)
        assert (sent.message_id, client.pending) == ("77", [])
        server.socket.push({"type": "message", "message": own})  # again: a duplicate
        server.socket.push({"type": "message", "message": message(78)})
        await until(lambda: seen == ["78"])


async def test_a_socket_closed_before_its_first_pong_is_retried_at_once() -> None:
    server = FakeServer()
    server.pong = False
    client = server.client(heartbeat_s=30)
    connecting = asyncio.create_task(client.connect(timeout=5))
    await until(lambda: bool(server.sockets))
    server.pong = True
    server.socket.drop(1013)  # e.g. deliveries unavailable: closed right after the upgrade
    await asyncio.wait_for(connecting, 2)  # not after the 30 s heartbeat
    assert len(server.sockets) == 2 and client.connected
    await client.close()


async def test_the_wire_tap_sees_frames_before_the_dedup_each_transmission_and_sync_pages() -> None:
    """What a measuring tool (the fault suite) reads below the app's view."""
    server = FakeServer()
    server.ack = False
    server.sync_pages = [{"messages": [message(10)], "cursor": "c1"}]
    tapped: list[tuple[str, dict[str, Any]]] = []
    client = server.client(wire_tap=lambda kind, data: tapped.append((kind, data)))
    seen: list[str] = []
    client.on(MessageEvent)(lambda e: seen.append(e.message.message_id))
    async with client:
        assert [d["messages"][0]["message_id"] for k, d in tapped if k == "sync"] == ["10"]
        server.socket.push({"type": "message", "message": message(20)})
        server.socket.push({"type": "message", "message": message(20)})  # a duplicate push
        await until(lambda: seen == ["10", "20"])
        sending = asyncio.create_task(client.send(CID, "hi", client_msg_id="k1"))
        await until(lambda: any(k == "out" for k, _ in tapped))
        server.ack = True
        server.socket.drop(None)  # no ack: sent again on the next connection
        sent = await asyncio.wait_for(sending, 5)
    pushes = [d["message"]["message_id"] for k, d in tapped if k == "in" and d["type"] == "message"]
    assert pushes == ["20", "20"] and seen == ["10", "20"]  # counted before the dedup, handed once
    outs = [d for k, d in tapped if k == "out"]
    assert [d["client_msg_id"] for d in outs] == ["k1", "k1"] and outs[0]["ref"] != outs[1]["ref"]
    acks = [d for k, d in tapped if k == "in" and d["type"] == "ack"]
    assert [(a["ref"], a["message_id"]) for a in acks] == [(outs[1]["ref"], sent.message_id)]


class LaggingLog:
    """A server whose ``/v1/sync`` read model lags its pushes (the persist worker behind the
    deliver worker): the log's messages are applied to what a sync reads only as the sync
    calls go by, while pushes reach every registered socket at once."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.log: list[dict[str, Any]] = []
        self.applied_at: dict[str, int] = {}  # message_id -> the sync call that first sees it
        self.calls = 0
        self.failing: set[int] = set()  # sync calls answered 503
        self.on_call: dict[int, Callable[[], None]] = {}

    def append(self, msg: dict[str, Any], *, applied_at_call: int, push: bool) -> None:
        self.log.append(msg)
        self.applied_at[msg["message_id"]] = applied_at_call
        if push:
            self.server.socket.push({"type": "message", "message": msg})

    async def http(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/sync"
        self.calls += 1
        self.on_call.get(self.calls, lambda: None)()
        if self.calls in self.failing:
            return httpx.Response(503, json={"error": {"code": "unavailable", "message": "later"}})
        since = int(request.url.params.get("since") or "0")
        applied = [i for i, m in enumerate(self.log) if self.applied_at[m["message_id"]] <= self.calls]
        # The cursor is the applied prefix: everything up to it is in the read model.
        upto = 0
        while upto < len(self.log) and upto in applied:
            upto += 1
        body = {"messages": self.log[since:upto], "receipts": [], "conversations": []}
        return httpx.Response(200, json={**body, "cursor": str(upto), "has_more": False})


async def test_a_resume_finds_a_message_pushed_before_registration_however_late_sync_sees_it() -> None:
    """Found by the fault suite (Kafka and Redis scenarios, SDK load): a message pushed while a
    device was reconnecting reached it neither live nor by sync, when the read model behind
    /v1/sync applied it later than the client's fixed follow-up syncs (1 s and 5 s then). The
    client now keeps syncing after a resume while the syncs still find messages the socket
    did not push, or a live push has not come back in a sync: the read model is behind."""
    server = FakeServer()
    log = LaggingLog(server)
    gate = asyncio.Event()
    gate.set()

    async def connect(url: str, headers: Mapping[str, str]) -> Transport:
        await gate.wait()
        return await server.connect(url, headers)

    client = TidingsClient(
        "http://gw1",
        ALICE,
        connector=connect,
        http_transport=httpx.MockTransport(log.http),
        heartbeat_s=5.0,
        backoff=Backoff(0.01, 0.02),
        resync_after_s=(0.01, 0.02),
        resync_max_gap_s=0.05,
        cursor_store=MemoryCursorStore("0"),
    )
    seen: list[str] = []
    client.on(MessageEvent)(lambda e: seen.append(e.message.message_id))
    async with client:
        # The first sync and its two scheduled follow-ups: nothing missed, so no more.
        await until(lambda: log.calls == 3)
        await asyncio.sleep(0.2)
        assert log.calls == 3
        gate.clear()
        server.socket.drop(1013)
        await until(lambda: not client.connected)
        # Appended while the device is away (no socket to push to): the resume's sync finds it.
        log.log.append(message(10))
        log.applied_at["10"] = 0
        # Also pushed before the new socket was registered, but applied by the read model only
        # at the eighth sync call: after the resume's sync (4) and both follow-ups (5, 6).
        log.log.append(message(20))
        log.applied_at["20"] = 8
        # Pushed live to the new socket (registered: the resume's sync comes after its first
        # pong) and applied with 20, in log order.
        log.on_call[4] = lambda: log.append(message(30), applied_at_call=8, push=True)
        log.failing.add(7)  # a follow-up answered 503 is tried again, not given up
        gate.set()
        await until(lambda: "20" in seen, 5)
        assert seen == ["10", "30", "20"]
        # A sync that found nothing the socket did not push, with every push back: it stops.
        await asyncio.sleep(0.5)
        assert log.calls == 9


async def test_a_close_fails_the_waiting_pings_without_an_unretrieved_exception_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import gc

    async def nowhere(url: str, headers: Mapping[str, str]) -> Transport:
        raise OSError("connection refused")

    client = TidingsClient("http://gw1", ALICE, connector=nowhere, backoff=Backoff(0.01, 0.02))

    async def closed() -> None:
        raise TransportClosed(1013, "deliveries interrupted; reconnect and sync")

    reader = asyncio.create_task(closed())
    with pytest.raises(TransportClosed):
        await reader
    abandoned: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # its waiter is gone
    waited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client._pongs.update({"p1": abandoned, "p2": waited})
    client._reader_ended(reader)
    with pytest.raises(TransportClosed):  # a waiting heartbeat still learns of the close
        await waited
    client._pongs.clear()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        del abandoned, waited
        gc.collect()
        await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text
