"""``TidingsClient`` with end-to-end encryption on, against the fake WebSocket server of
``test_sdk_client`` and the in-memory key directory of ``test_e2ee_sdk``: ``send()`` in an
encrypted conversation puts only ciphertext on the wire and answers with the plaintext; a
message whose room key comes after it waits for the key; one whose key never comes is handed
over undecrypted after ``key_wait_s``; a sync page's room keys open its messages; the SDK core
imports without vodozemac."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
from tidings_client import Message, MessageEvent, TidingsClient
from tidings_client.e2ee import MemoryKeyStore

from tests.unit.test_e2ee_sdk import CID, FAST_KDF, Api, World, deliver, device, send
from tests.unit.test_sdk_client import ALICE, FakeServer, until


class EncryptedServer(FakeServer):
    """The fake server, knowing one encrypted conversation and storing what is sent."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world

    async def http(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/v1/conversations/{CID}":
            conversation = {"conversation_id": CID, "kind": "group", "title": "t", "encrypted": True}
            return httpx.Response(200, json={"conversation": conversation})
        return await super().http(request)


def wire(frame: dict[str, Any], message_id: str) -> dict[str, Any]:
    """The message object the server makes of a send frame."""
    keep = (
        "conversation_id",
        "client_msg_id",
        "kind",
        "ciphertext",
        "algorithm",
        "session_id",
        "sender_device",
    )
    return {
        "message_id": message_id,
        "sender_id": "alice",
        "ts": 1,
        "body": None,
        **{k: frame[k] for k in keep},
    }


async def client_with_e2ee(world: World, server: FakeServer, **options: Any) -> TidingsClient:
    client = TidingsClient(
        "http://gw1",
        ALICE,
        connector=server.connect,
        http_transport=httpx.MockTransport(server.http),
        resync_after_s=(),
        **options,
    )
    await client.enable_e2ee(
        "alice's passphrase", MemoryKeyStore(), key_server=Api(world, "alice", "phone"), scrypt_n=FAST_KDF
    )
    return client


async def test_send_puts_only_ciphertext_on_the_wire_and_receives_decrypt() -> None:
    world = World()
    world.members[CID] = {"alice", "bob"}
    bob = await device(world, "bob", "d1")
    server = EncryptedServer(world)
    client = await client_with_e2ee(world, server, key_wait_s=0.3)
    await client.connect(timeout=5)
    events = client.events(MessageEvent)
    try:
        sent = await client.send(CID, "the launch code is 0000")
        assert (sent.kind, sent.body, sent.encrypted) == ("text", "the launch code is 0000", True)
        (frame,) = [f for f in server.socket.frames if f["type"] == "send"]
        assert frame["kind"] == "encrypted" and "body" not in frame and frame["sender_device"] == "phone"
        assert "0000" not in json.dumps(frame)
        await deliver(world, bob)
        assert bob.decrypt(Message.from_json(wire(frame, sent.message_id))).body == "the launch code is 0000"

        # Bob's reply arrives before its room key: it waits, and comes decrypted with the key.
        reply = await send(world, bob, "roger")
        server.socket.push({"type": "message", "message": {**reply.__dict__, "body": None}})
        for to_device in world.queues.pop(("alice", "phone")):
            server.socket.push(to_device)
        got = (await events.next(timeout=5)).message
        assert (got.message_id, got.body, got.sender_id, got.decryption_error) == (
            reply.message_id,
            "roger",
            "bob",
            None,
        )

        # One whose key never comes is handed over after key_wait_s, undecrypted, saying why.
        stranger = await device(world, "carol", "d1")
        world.members[CID].add("carol")
        lost = await send(world, stranger, "you will not read this")
        world.queues.clear()
        server.socket.push({"type": "message", "message": {**lost.__dict__, "body": None}})
        got = (await events.next(timeout=5)).message
        assert got.message_id == lost.message_id and got.body is None and got.encrypted
        assert got.decryption_error is not None and "no room key" in got.decryption_error
    finally:
        await client.close()


async def test_a_sync_pages_room_keys_open_its_messages() -> None:
    world = World()
    world.members[CID] = {"alice", "bob"}
    bob = await device(world, "bob", "d1")
    server = EncryptedServer(world)
    client = await client_with_e2ee(world, server)
    first = await send(world, bob, "while you were away")
    second = await send(world, bob, "and again")
    server.sync_pages = [
        {
            "messages": [{**m.__dict__, "body": None} for m in (first, second)],
            "to_device": world.queues.pop(("alice", "phone")),
            "cursor": "c1",
        }
    ]
    inbox: list[Message] = []
    client.on(MessageEvent)(lambda e: inbox.append(e.message))
    await client.connect(timeout=5)
    try:
        await until(lambda: len(inbox) == 2)
        assert [m.body for m in inbox] == ["while you were away", "and again"]
        assert client.e2ee is not None and client.e2ee.has_room_key(first.session_id or "")
    finally:
        await client.close()


def test_the_sdk_core_imports_without_vodozemac() -> None:
    code = "import sys, tidings_client; assert 'vodozemac' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
