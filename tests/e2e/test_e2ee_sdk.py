"""The SDK's end-to-end encryption against the running system: SDK clients with vodozemac
(``TidingsClient.enable_e2ee``) publish their keys, share Megolm room keys over to-device Olm
messages and talk in encrypted conversations; the server only ever holds ciphertext. A 1:1
exchange; a group a member joins (reads from then on) and leaves (cannot read what follows, even
holding its ciphertext and every key it ever had); a device added later reads what is sent after
it appeared, not before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from tidings_client import Backoff, Message, MessageEvent, TidingsClient
from tidings_client.e2ee import DecryptionError, MemoryKeyStore, MissingRoomKey

from tests.e2e.conftest import System, user
from tests.polling import until as _until

HEARTBEAT_S = 1.0
FAST_KDF = 2**12


@asynccontextmanager
async def e2ee_client(
    system: System, who: str, device: str
) -> AsyncIterator[tuple[TidingsClient, list[Message]]]:
    """An SDK client with E2EE on (keys published before it connects) and the messages it yields."""
    client = TidingsClient(
        system.http,
        system.token(who, device),
        heartbeat_s=HEARTBEAT_S,
        backoff=Backoff(0.2, 2.0),
        key_wait_s=20,
    )
    inbox: list[Message] = []
    client.on(MessageEvent)(lambda e: inbox.append(e.message))
    await client.enable_e2ee(f"{who}/{device} passphrase", MemoryKeyStore(), scrypt_n=FAST_KDF)
    await client.connect(timeout=60)
    try:
        yield client, inbox
    finally:
        await client.close()


async def _received(inbox: list[Message], message_id: str, what: str) -> Message:
    await _until(lambda: any(m.message_id == message_id for m in inbox), 40, what)
    (got,) = [m for m in inbox if m.message_id == message_id]
    return got


def _stored(system: System, who: str, cid: str) -> list[dict[str, Any]]:
    """The conversation's history as the server returns it (no SDK, no decryption)."""
    status, page = system.request("GET", f"/v1/conversations/{cid}/messages", user=who)
    assert status == 200, page
    return list(page["messages"])


async def test_a_one_to_one_encrypted_exchange_through_the_sdk(system: System) -> None:
    alice, bob = user(), user()
    async with (
        e2ee_client(system, alice, "phone") as (a, a_inbox),
        e2ee_client(system, bob, "laptop") as (b, b_inbox),
    ):
        chat = await a.open_direct(bob, encrypted=True)
        assert chat.encrypted
        sent = await a.send(chat.conversation_id, "the vault opens at 09:41")
        assert (sent.body, sent.encrypted) == ("the vault opens at 09:41", True)
        got = await _received(b_inbox, sent.message_id, "bob's copy")
        assert (got.kind, got.body, got.sender_id, got.sender_device) == (
            "text",
            "the vault opens at 09:41",
            alice,
            "phone",
        )
        reply = await b.send(chat.conversation_id, "see you at 09:40")
        assert (await _received(a_inbox, reply.message_id, "alice's copy")).body == "see you at 09:40"

        # The server holds ciphertext only; both SDKs read their history back in plaintext.
        stored = _stored(system, alice, chat.conversation_id)
        assert [m["kind"] for m in stored] == ["encrypted", "encrypted"]
        assert all(m["body"] is None and "09:4" not in m["ciphertext"] for m in stored)
        for client in (a, b):
            page = await client.history(chat.conversation_id)
            assert [m.body for m in page.messages] == ["the vault opens at 09:41", "see you at 09:40"]
        # Each side holds the other's room key (shared over Olm, never through the server in clear).
        assert a.e2ee is not None and b.e2ee is not None
        assert b.e2ee.has_room_key(sent.session_id or "") and a.e2ee.has_room_key(reply.session_id or "")


async def test_a_member_who_joins_reads_from_then_and_after_leaving_cannot(system: System) -> None:
    alice, bob, carol = user(), user(), user()
    async with (
        e2ee_client(system, alice, "phone") as (a, _),
        e2ee_client(system, bob, "laptop") as (b, b_inbox),
        e2ee_client(system, carol, "d1") as (c, c_inbox),
    ):
        group = await a.create_group("the plan", [bob], encrypted=True)
        cid = group.conversation_id
        assert group.encrypted
        before = await a.send(cid, "before carol: the plan is secret")
        assert (
            await _received(b_inbox, before.message_id, "bob's first")
        ).body == "before carol: the plan is secret"

        await a.add_members(cid, [carol])
        joined = await a.send(cid, "welcome carol")
        assert joined.session_id == before.session_id  # a join re-shares the current key, from now on
        assert (await _received(c_inbox, joined.message_id, "carol's welcome")).body == "welcome carol"
        assert c.e2ee is not None
        early = [m for m in _stored(system, alice, cid) if m["message_id"] == before.message_id]
        with pytest.raises(DecryptionError):
            c.e2ee.decrypt(Message.from_json(early[0]))  # the key she got starts after it

        await c.leave(cid)
        after = await a.send(cid, "carol has left: the real plan")
        assert after.session_id != joined.session_id  # rotated: carol's device held the old key
        got = await _received(b_inbox, after.message_id, "bob's copy after carol left")
        assert got.body == "carol has left: the real plan"
        # Carol holds the later ciphertext (as any member fetched it) and every key she ever
        # had, and cannot read it; no room key of the new session ever reached her device.
        (later,) = [m for m in (await b.history(cid)).messages if m.message_id == after.message_id]
        assert later.ciphertext and later.session_id == after.session_id
        stranger_copy = Message.from_json(
            {**next(m for m in _stored(system, bob, cid) if m["message_id"] == after.message_id)}
        )
        await asyncio.sleep(2)  # time for a (wrongly sent) room key to have reached her
        assert not c.e2ee.has_room_key(after.session_id or "")
        with pytest.raises(MissingRoomKey):
            c.e2ee.decrypt(stranger_copy)
        assert all(m.message_id != after.message_id for m in c_inbox)


async def test_a_device_added_later_reads_what_is_sent_after_it_appeared(system: System) -> None:
    """Needs ``device_list`` frames (or ``device_lists`` in sync) from the server: the sender
    learns of the new device through them."""
    alice, bob = user(), user()
    async with (
        e2ee_client(system, alice, "phone") as (a, _),
        e2ee_client(system, bob, "laptop") as (_laptop, b_inbox),
    ):
        chat = await a.open_direct(bob, encrypted=True)
        first = await a.send(chat.conversation_id, "only the laptop exists")
        await _received(b_inbox, first.message_id, "the laptop's copy")
        async with e2ee_client(system, bob, "tablet") as (tablet, t_inbox):
            # The tablet's keys were published: alice's client hears of it (a device_list frame)
            # and shares the key with it on her next send.
            e2ee = a.e2ee
            assert e2ee is not None
            await _until(lambda: e2ee.cached_devices(bob) is None, 40, "alice's device_list for bob")
            second = await a.send(chat.conversation_id, "hello tablet")
            got = await _received(t_inbox, second.message_id, "the tablet's copy")
            assert got.body == "hello tablet" and got.decryption_error is None
            assert (await _received(b_inbox, second.message_id, "the laptop's second")).body == "hello tablet"
            page = await tablet.history(chat.conversation_id)
            bodies = {m.message_id: (m.body, m.decryption_error) for m in page.messages}
            assert bodies[second.message_id] == ("hello tablet", None)
            assert bodies[first.message_id][0] is None and bodies[first.message_id][1]  # from before it
