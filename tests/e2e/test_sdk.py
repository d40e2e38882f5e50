"""The Python SDK (``client/``) against the running system: two SDK clients talk; the outbox
resends with the same ``client_msg_id`` and nothing is stored twice; a client finds every
message exactly once across a ``kill -9`` of its gateway and across a draining gateway; refusals
are typed errors carrying the protocol code."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from tidings_client import (
    Backoff,
    ConnectionState,
    FileCursorStore,
    Forbidden,
    InvalidRequest,
    Message,
    MessageEvent,
    NotFound,
    Presence,
    RateLimited,
    Receipt,
    TidingsClient,
    TooLarge,
    Typing,
    direct_conversation_id,
)

from tests.e2e.conftest import Gateway, System, user, wait_until
from tests.e2e.sdk_proxy import Proxy
from tests.polling import until as _until

# The test system closes sockets silent for 8 s: SDK clients heartbeat every second.
HEARTBEAT_S = 1.0


@asynccontextmanager
async def sdk(
    system: System, who: str, url: str | list[str] | None = None, device: str = "sdk", **options: Any
) -> AsyncIterator[TidingsClient]:
    options.setdefault("heartbeat_s", HEARTBEAT_S)
    options.setdefault("backoff", Backoff(0.2, 2.0))
    client = TidingsClient(url or system.http, system.token(who, device), **options)
    await client.connect(timeout=60)
    try:
        yield client
    finally:
        await client.close()


async def _settled(client: TidingsClient) -> None:
    """Until the gateway has handled every frame the client sent so far: it handles a socket's
    frames in order, so the pong of a ping sent now comes after them (the SDK's own ping)."""
    assert client._ws is not None
    await client._roundtrip(client._ws, 10)


class Inbox:
    """Every message event of one client, in the order it yielded them."""

    def __init__(self, client: TidingsClient) -> None:
        self.messages: list[Message] = []
        self.states: list[ConnectionState] = []
        client.on(MessageEvent)(lambda e: self.messages.append(e.message))
        client.on(ConnectionState)(self.states.append)

    def ids(self, cid: str) -> list[str]:
        return [m.message_id for m in self.messages if m.conversation_id == cid]

    async def wait_for(self, cid: str, ids: set[str], timeout: float = 60) -> None:  # noqa: ASYNC109
        await _until(lambda: ids <= set(self.ids(cid)), timeout, f"{len(ids)} messages in {cid}")


async def test_two_sdk_clients_send_ack_receive_read_type_and_see_presence(system: System) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    async with sdk(system, bob, typing_idle_s=1.0) as b, sdk(system, alice, typing_idle_s=1.0) as a:
        assert (a.user_id, a.device_id) == (alice, "sdk")
        stream = b.events(MessageEvent)
        conversation = await a.open_direct(bob)
        assert conversation.conversation_id == cid and conversation.kind == "direct"
        sent = [await a.send(cid, f"hello {i}") for i in range(3)]
        assert all(m.sender_id == alice and m.conversation_id == cid for m in sent)
        assert [m.order_key for m in sent] == sorted(m.order_key for m in sent)
        got = [(await stream.next(timeout=15)).message for _ in sent]
        assert [m.message_id for m in got] == [m.message_id for m in sent]
        assert [m.body for m in got] == ["hello 0", "hello 1", "hello 2"]
        assert got[0].client_msg_id == sent[0].client_msg_id

        page = await b.history(cid, limit=2)
        assert [m.message_id for m in page.messages] == [m.message_id for m in sent[1:]] and page.has_more
        assert [m.body async for m in b.iter_history(cid, page_size=2)] == ["hello 2", "hello 1", "hello 0"]

        receipts = a.events(Receipt)
        await b.mark_read(cid, sent[-1].message_id)
        receipt = await receipts.next(timeout=15)
        assert (receipt.user_id, receipt.message_id, receipt.status) == (bob, sent[-1].message_id, "read")
        marks: dict[str, Any] = {}

        async def recorded() -> bool:  # the watermarks' read model follows the log
            nonlocal marks
            marks = {w.user_id: w for w in await a.receipts(cid)}
            return bob in marks

        await wait_until(recorded)
        assert marks[bob].read == sent[-1].message_id

        # Typing reaches a viewer, and stops by itself.
        typing = b.events(Typing)
        await b.view(cid)
        await _settled(b)  # the view is applied before the typing frame
        await a.typing(cid)
        assert (await typing.next(timeout=10)) == Typing(cid, alice, "start")
        assert (await typing.next(timeout=10)) == Typing(cid, alice, "stop")

        presence = a.events(Presence)
        await a.watch([bob])
        first = await presence.next(timeout=10)
        assert (first.user_id, first.state) == (bob, "online")
        assert (await a.presence(bob)).state == "online"


async def test_group_lifecycle_through_the_sdk(system: System) -> None:
    owner, member, late = user(), user(), user()
    async with sdk(system, owner) as o, sdk(system, member) as m:
        group = await o.create_group("Team", [member])
        assert group.kind == "group" and group.title == "Team" and group.member_count == 2
        added = await o.add_members(group.conversation_id, [late])
        assert [x.user_id for x in added] == [late]
        roles = {x.user_id: x.role async for x in o.iter_members(group.conversation_id, page_size=1)}
        assert roles == {owner: "owner", member: "member", late: "member"}
        stream = m.events(MessageEvent)
        sent = await o.send(group.conversation_id, "welcome")
        assert (await stream.next(timeout=15)).message.message_id == sent.message_id
        await m.leave(group.conversation_id)
        with pytest.raises(Forbidden) as refused:
            await m.history(group.conversation_id)
        assert refused.value.code == "forbidden" and refused.value.status == 403
        renamed = await o.rename(group.conversation_id, "Team 2")
        assert renamed.title == "Team 2" and renamed.member_count == 2
        one = await o.conversation(group.conversation_id)
        assert (one.conversation_id, one.kind, one.title) == (group.conversation_id, "group", "Team 2")
        inbox = [c.conversation_id async for c in o.iter_conversations()]
        assert group.conversation_id in inbox


async def test_typed_errors_carry_the_protocol_code(system: System) -> None:
    alice, bob, stranger = user(), user(), user()
    async with sdk(system, alice) as a, sdk(system, stranger) as s:
        group = await a.create_group("Private", [bob])
        # Over the WebSocket (the send's error frame) ...
        with pytest.raises(Forbidden) as forbidden:
            await s.send(group.conversation_id, "let me in")
        assert forbidden.value.code == "forbidden" and forbidden.value.status is None
        with pytest.raises(InvalidRequest) as blank:
            await a.send(group.conversation_id, "   ")
        assert blank.value.code == "invalid"
        with pytest.raises(TooLarge) as large:
            await a.send(group.conversation_id, "x" * 4001)
        assert large.value.code == "too_large"
        with pytest.raises(NotFound):
            await a.send("g:1234567890", "nobody here")
        assert a.pending == [] and s.pending == []
        # ... and over HTTP.
        with pytest.raises(Forbidden) as http_forbidden:
            await s.members(group.conversation_id)
        assert http_forbidden.value.status == 403
        with pytest.raises(InvalidRequest) as http_invalid:
            await a.create_group("   ", [bob])
        assert http_invalid.value.status == 400 and http_invalid.value.code == "invalid"
        # The client still works after refusals.
        assert (await a.send(group.conversation_id, "still here")).body == "still here"


async def test_a_send_over_the_rate_limit_raises_rate_limited_with_retry_after(system: System) -> None:
    # A slow bucket (5 at once, then one per 5 s): at the default 20/s a gateway that takes
    # more than 50 ms per ack (a loaded machine) refills it as fast as the sends drain it.
    slow = {"TIDINGS_RATE_SEND_PER_S": "0.2", "TIDINGS_RATE_SEND_BURST": "5"}
    gateway = Gateway(system, "sdk-limits", default_limits=True, env=slow)
    try:
        alice, bob = user(), user()
        cid = direct_conversation_id(alice, bob)
        async with sdk(system, alice, url=gateway.http) as a:
            results = await asyncio.gather(
                *(a.send(cid, f"burst {i}") for i in range(20)), return_exceptions=True
            )
        limited = [r for r in results if isinstance(r, RateLimited)]
        accepted = [r for r in results if isinstance(r, Message)]
        assert limited, results
        assert len(limited) + len(accepted) == len(results), [r for r in results if isinstance(r, Exception)]
        assert all(
            e.code == "rate_limited" and e.retry_after is not None and e.retry_after >= 1 for e in limited
        )
    finally:
        gateway.stop()


async def test_the_outbox_resends_with_the_same_client_msg_id_and_nothing_is_stored_twice(
    system: System,
) -> None:
    """The server stores the send but its ack never reaches the client (the proxy swallows what
    the server says); the client's heartbeat finds the connection dead, it reconnects and sends
    again with the same client_msg_id: one message stored, and send() returns its id."""
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    async with Proxy(system.port) as proxy, sdk(system, alice, url=proxy.http) as a:
        inbox = Inbox(a)
        proxy.mute_server()  # the current connection: frames from the server are dropped
        sending = asyncio.create_task(a.send(cid, "exactly once", client_msg_id="sdk-once-1"))

        def stored() -> list[dict[str, Any]]:
            status, body = system.request("GET", f"/v1/conversations/{cid}/messages", user=bob)
            return body["messages"] if status == 200 else []

        await _until(lambda: len(stored()) == 1, 30, "the send stored")
        assert not sending.done()  # no ack came through
        message = await asyncio.wait_for(sending, 60)
        # The first connection delivered no ack: this id came from the next connection (the ack
        # of the resend, or the resume sync finding the message first); a resend under another
        # client_msg_id would have stored a second message.
        history = stored()
        assert [m["message_id"] for m in history] == [message.message_id]
        assert history[0]["client_msg_id"] == "sdk-once-1"
        assert any(s.state == "disconnected" for s in inbox.states)
        assert inbox.ids(cid) == []  # its own send is returned by send(), never an event


async def test_kill_9_of_the_gateway_mid_conversation_loses_and_duplicates_nothing(system: System) -> None:
    """Bob's SDK client is on the system's gateway; Alice sends through another gateway before,
    while and after Bob's gateway is killed with SIGKILL and started again on the same port.
    Bob sends too, right as his gateway dies: his outbox delivers each of those exactly once."""
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    other = Gateway(system, "sdk-sender")
    try:
        async with sdk(system, bob) as b, sdk(system, alice, url=other.http) as a:
            inbox = Inbox(b)
            acked: list[str] = []

            async def burst(label: str, n: int) -> None:
                for i in range(n):
                    acked.append((await a.send(cid, f"{label} {i}")).message_id)

            alice_inbox = Inbox(a)
            await burst("before", 10)
            await inbox.wait_for(cid, set(acked))
            # Bob's sends go out (some may be in flight, appended but not acked) as he loses his
            # gateway; the outbox sends them again on his next connection.
            bob_sends = [asyncio.create_task(b.send(cid, f"bob {i}")) for i in range(5)]
            # Not a wait for a condition: the kill is meant to land while the sends are in flight.
            await asyncio.sleep(0.01)
            system.kill("gateway")
            await burst("while down", 10)
            system.start("gateway")
            await asyncio.to_thread(system.wait_ready)
            await burst("after", 10)
            from_bob = await asyncio.wait_for(asyncio.gather(*bob_sends), 90)
            await inbox.wait_for(cid, set(acked), timeout=90)
            await alice_inbox.wait_for(cid, {m.message_id for m in from_bob}, timeout=90)
            # The behaviour under test, not a wait: the follow-up syncs within this bring no duplicate.
            await asyncio.sleep(2 * HEARTBEAT_S + 5)
            counts = Counter(inbox.ids(cid))
            assert set(counts) - {m.message_id for m in from_bob} == set(acked)
            assert max(counts.values()) == 1, [mid for mid, n in counts.items() if n > 1]
            # Not asserted: the order across the kill. A message pushed before the new socket was
            # registered is found by a follow-up sync after newer live pushes (docs/sdk.md).
            assert Counter(alice_inbox.ids(cid)) == Counter(m.message_id for m in from_bob)
            status, page = system.request("GET", f"/v1/conversations/{cid}/messages?limit=100", user=alice)
            assert status == 200
            stored = Counter(m["client_msg_id"] for m in page["messages"] if m["sender_id"] == bob)
            assert stored == Counter(m.client_msg_id for m in from_bob)  # each stored once
            assert [s.state for s in inbox.states].count("connected") >= 1
            assert any(s.state == "disconnected" for s in inbox.states)
    finally:
        other.stop()


async def test_a_draining_gateway_is_followed_to_another_and_nothing_is_missed(system: System) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    draining = Gateway(system, "sdk-draining", env={"TIDINGS_DRAIN_SPREAD_S": "2"})
    stopping: asyncio.Task[None] | None = None
    try:
        async with sdk(system, bob, url=[draining.http, system.http]) as b, sdk(system, alice) as a:
            inbox = Inbox(b)
            acked = [(await a.send(cid, f"before {i}")).message_id for i in range(5)]
            await inbox.wait_for(cid, set(acked))
            stopping = asyncio.create_task(asyncio.to_thread(draining.stop))
            for i in range(10):
                acked.append((await a.send(cid, f"during {i}")).message_id)
                await asyncio.sleep(0.2)  # not a wait: paces the sends across the drain
            await stopping
            await _until(lambda: b.connected and b.url == system.http, 30, "reconnected to the other gateway")
            acked += [(await a.send(cid, f"after {i}")).message_id for i in range(5)]
            await inbox.wait_for(cid, set(acked))
            counts = Counter(inbox.ids(cid))
            assert set(counts) == set(acked) and max(counts.values()) == 1
            dropped = [s for s in inbox.states if s.state == "disconnected"]
            assert dropped and dropped[0].reason == "reconnect frame" and dropped[0].code == 1012
            assert dropped[0].retry_in_s is not None and 0 <= dropped[0].retry_in_s <= 2.0
        assert draining.proc.returncode == 0
    finally:
        if stopping is None:
            draining.stop()


async def test_a_restarted_app_resumes_from_its_file_cursor_and_misses_nothing(
    system: System, tmp_path: Path
) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    store = FileCursorStore(tmp_path / "bob.cursor")

    async def run_app(until_seen: set[str]) -> list[str]:
        """One run of bob's app: connect (resuming from the file), until it has seen these."""
        client = TidingsClient(
            system.http, system.token(bob, "sdk"), cursor_store=store, heartbeat_s=HEARTBEAT_S
        )
        inbox = Inbox(client)  # before connect(): the resume's events too
        await client.connect(timeout=60)
        try:
            looked = False

            async def seen() -> bool:  # the sync read model follows the log
                # As before: look first, then sync again only after a poll interval has passed.
                nonlocal looked
                if looked:
                    await client.sync()
                looked = True
                return until_seen <= set(inbox.ids(cid))

            assert await wait_until(seen, timeout=30, interval=0.2), (until_seen, inbox.ids(cid))
            await client.sync()  # the newest cursor the server gives, into the file
            return inbox.ids(cid)
        finally:
            await client.close()

    async with sdk(system, alice) as a:
        first = await a.send(cid, "seen by the first run")
        assert await run_app({first.message_id}) == [first.message_id]
        assert store.path.exists()
        missed = [(await a.send(cid, f"while bob's app was closed {i}")).message_id for i in range(5)]
        # The app starts again: a new client object, the cursor from the file.
        seen = await run_app(set(missed))
        # Every missed message, once; the only other one it may show again is the first (the
        # stored cursor may trail what the first run showed: protocol.md, Sync). In message_id
        # order once placed by their order key: one pushed before the new socket was registered
        # and found by a follow-up sync comes after newer live pushes (docs/sdk.md, "Resume,
        # duplicates, order"), as the suite saw on a loaded machine.
        resumed = [mid for mid in seen if mid in missed]
        assert sorted(resumed, key=int) == missed and len(resumed) == len(missed)
        assert set(seen) - set(missed) <= {first.message_id} and len(seen) == len(set(seen))
