"""End-to-end encrypted conversations over the running system, with real Megolm ciphertext from
vodozemac: the flag at creation (groups) or on first request (direct chats), never unset; sends
there only as ``encrypted`` and nowhere else; ciphertext fanned out, kept and paged unchanged;
no preview; hostile input refused with nothing stored."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from events import direct_conversation_id
from tests.e2e.conftest import System, user, wait_until
from tests.e2ee_support import Megolm, decrypt


def _history(system: System, who: str, cid: str) -> list[dict[str, Any]]:
    status, page = system.request("GET", f"/v1/conversations/{cid}/messages", user=who)
    assert status == 200, page
    return list(page["messages"])


async def _history_of(system: System, who: str, cid: str, ids: list[str]) -> list[dict[str, Any]]:
    """The history once it holds exactly ``ids`` (the workers write a few ms after the ack; on a
    loaded machine, longer)."""
    found: list[dict[str, Any]] = []
    for _ in range(100):
        found = _history(system, who, cid)
        if [m["message_id"] for m in found] == ids:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"history of {cid} never held {ids}: {found}")


def _send(system: System, who: str, device: str, cid: str, body: dict[str, Any]) -> tuple[int, Any]:
    token = system.token(who, device)
    return system.request("POST", f"/v1/conversations/{cid}/messages", token=token, body=body)


async def test_an_encrypted_group_carries_only_ciphertext_live_in_history_and_sync(system: System) -> None:
    alice, bob = user(), user()
    status, created = system.request(
        "POST",
        "/v1/conversations",
        user=alice,
        body={"kind": "group", "title": "secret", "members": [bob], "encrypted": True},
    )
    assert status == 201 and created["conversation"]["encrypted"] is True, created
    cid = created["conversation"]["conversation_id"]
    megolm = Megolm("phone")
    bob_reads = megolm.reader()
    async with system.connect(bob) as bob_ws, system.connect(alice, "phone") as alice_ws:
        body = megolm.send_body("meet at noon", uuid.uuid4().hex)
        await alice_ws.send({"type": "send", "ref": "s1", "conversation_id": cid, **body})
        ack = await alice_ws.expect("ack", ref="s1")
        frame = (await bob_ws.expect("message", timeout=20))["message"]
    assert frame["message_id"] == ack["message_id"]
    assert frame["kind"] == "encrypted" and frame["body"] is None and frame["media"] is None
    assert {k: frame[k] for k in ("ciphertext", "algorithm", "session_id", "sender_device")} == {
        k: body[k] for k in ("ciphertext", "algorithm", "session_id", "sender_device")
    }
    assert decrypt(bob_reads, frame["ciphertext"]) == "meet at noon"
    # Over HTTP too; history (hot tier, then warm once the hot one is gone) gives the same object.
    second = megolm.send_body("bring the key", uuid.uuid4().hex)
    status, accepted = _send(system, alice, "phone", cid, second)
    assert status == 202, accepted
    history = await _history_of(system, bob, cid, [ack["message_id"], accepted["message_id"]])
    assert history[0] == frame
    assert decrypt(bob_reads, history[1]["ciphertext"]) == "bring the key"
    # Nothing else goes in: plaintext, media, or an encrypted send without its fields.
    status, refused = _send(
        system, alice, "phone", cid, {"client_msg_id": "t1", "kind": "text", "body": "hi"}
    )
    assert status == 400 and refused["error"]["code"] == "invalid", refused

    # The conversation object says so everywhere; the inbox shows no preview of it.
    # (The conversation row's last message is its own projection: it may land after history.)
    def conversation() -> dict[str, Any] | None:
        status, one = system.request("GET", f"/v1/conversations/{cid}", user=bob)
        assert status == 200, one
        last = one["conversation"]["last_message"]
        return one["conversation"] if last and last["message_id"] == accepted["message_id"] else None

    def listed() -> dict[str, Any] | None:
        status, inbox = system.request("GET", "/v1/conversations", user=bob)
        assert status == 200, inbox
        (row,) = [c for c in inbox["conversations"] if c["conversation_id"] == cid]
        last = row["last_message"]
        return row if last and last["message_id"] == accepted["message_id"] else None

    one = await wait_until(conversation)
    assert one is not None and one["encrypted"] is True and one["last_message"]["preview"] is None
    row = await wait_until(listed)
    assert row is not None and row["encrypted"] is True and row["last_message"]["preview"] is None
    status, page = system.request("GET", "/v1/sync", token=system.token(bob, "laptop"))
    assert status == 200, page
    (synced,) = [
        c["conversation"] for c in page["conversations"] if c["conversation"]["conversation_id"] == cid
    ]
    assert synced["encrypted"] is True
    assert [m for m in page["messages"] if m["conversation_id"] == cid] == history
    # Encryption cannot be turned off, nor a plaintext group turned on later.
    status, refused = system.request(
        "PATCH", f"/v1/conversations/{cid}", user=alice, body={"title": "x", "encrypted": False}
    )
    assert status == 409 and refused["error"]["code"] == "conflict", refused
    assert _history(system, bob, cid) == history


async def test_a_direct_chat_becomes_encrypted_when_either_side_asks_and_stays_so(system: System) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    status, opened = system.request(
        "POST", "/v1/conversations", user=alice, body={"kind": "direct", "members": [bob]}
    )
    assert status == 200 and opened["conversation"]["encrypted"] is False, opened
    status, first = _send(
        system, alice, "default", cid, {"client_msg_id": "p1", "kind": "text", "body": "plain first"}
    )
    assert status == 202
    megolm = Megolm("default")
    status, refused = _send(system, alice, "default", cid, megolm.send_body("too early", "e0"))
    assert status == 400 and refused["error"]["code"] == "invalid"  # not encrypted yet
    # Bob asks; from then on, for both, only ciphertext.
    status, asked = system.request(
        "POST", "/v1/conversations", user=bob, body={"kind": "direct", "members": [alice], "encrypted": True}
    )
    assert status == 200 and asked["conversation"]["encrypted"] is True, asked
    status, seen = system.request("GET", f"/v1/conversations/{cid}", user=alice)
    assert status == 200 and seen["conversation"]["encrypted"] is True
    status, refused = _send(
        system, alice, "default", cid, {"client_msg_id": "p2", "kind": "text", "body": "plain"}
    )
    assert status == 400 and refused["error"]["code"] == "invalid"
    status, secret = _send(system, alice, "default", cid, megolm.send_body("now secret", "e1"))
    assert status == 202
    # Asking again changes nothing; asking to turn it off is 409; opening it plainly still says so.
    status, again = system.request(
        "POST", "/v1/conversations", user=alice, body={"kind": "direct", "members": [bob], "encrypted": True}
    )
    assert status == 200 and again["conversation"]["encrypted"] is True
    status, refused = system.request(
        "POST", "/v1/conversations", user=alice, body={"kind": "direct", "members": [bob], "encrypted": False}
    )
    assert status == 409 and refused["error"]["code"] == "conflict", refused
    status, plain = system.request(
        "POST", "/v1/conversations", user=alice, body={"kind": "direct", "members": [bob]}
    )
    assert status == 200 and plain["conversation"]["encrypted"] is True
    history = await _history_of(system, bob, cid, [first["message_id"], secret["message_id"]])
    assert [(m["kind"], m["body"]) for m in history] == [("text", "plain first"), ("encrypted", None)]


async def test_hostile_encrypted_sends_are_refused_and_nothing_is_stored(system: System) -> None:
    alice, bob = user(), user()
    status, created = system.request(
        "POST",
        "/v1/conversations",
        user=alice,
        body={"kind": "group", "title": "g", "members": [bob], "encrypted": True},
    )
    cid = created["conversation"]["conversation_id"]
    megolm = Megolm("phone")
    good = megolm.send_body("x", "good")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**good, "ciphertext": "not base64!"}, 400, "invalid"),
        ({**good, "ciphertext": "QUJD=QUJD"}, 400, "invalid"),
        ({**good, "ciphertext": "A" * 65 * 1024}, 413, "too_large"),
        ({**good, "ciphertext": ""}, 400, "invalid"),
        ({k: v for k, v in good.items() if k != "ciphertext"}, 400, "invalid"),
        ({k: v for k, v in good.items() if k != "algorithm"}, 400, "invalid"),
        ({k: v for k, v in good.items() if k != "session_id"}, 400, "invalid"),
        ({k: v for k, v in good.items() if k != "sender_device"}, 400, "invalid"),
        ({**good, "sender_device": "someone-elses"}, 400, "invalid"),
        ({**good, "algorithm": "megolm v1 <script>"}, 400, "invalid"),
        ({**good, "body": "leaked plaintext"}, 400, "invalid"),
        ({**good, "ciphertext": 12345}, 400, "invalid"),
        ({**good, "kind": "image", "media_id": "m1"}, 400, "invalid"),
    ]
    for i, (body, code, name) in enumerate(cases):
        body = {**body, "client_msg_id": f"bad{i}"}
        status, refused = _send(system, alice, "phone", cid, body)
        assert (status, refused["error"]["code"]) == (code, name), (i, refused)
    async with system.connect(alice, "phone") as ws:
        await ws.send({"type": "send", "ref": "w", "conversation_id": cid, **{**good, "ciphertext": "%%%"}})
        assert (await ws.expect("error", ref="w"))["code"] == "invalid"
        await ws.send(
            {"type": "send", "ref": "t", "conversation_id": cid, "client_msg_id": "t", "body": "plain"}
        )
        assert (await ws.expect("error", ref="t"))["code"] == "invalid"
    # A stranger may not send even well-formed ciphertext.
    status, refused = _send(system, user(), "phone", cid, {**good, "client_msg_id": "stranger"})
    assert status == 403 and refused["error"]["code"] == "forbidden"
    assert _history(system, bob, cid) == []
    status, accepted = _send(system, alice, "phone", cid, good)
    assert status == 202
    # Only the good one, once the workers have it (nothing refused slipped in before it).
    await _history_of(system, bob, cid, [accepted["message_id"]])
