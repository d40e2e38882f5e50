"""Two users, three devices, over real WebSockets: delivery, ack, history, idempotent retry."""

from __future__ import annotations

from typing import Any

from events import direct_conversation_id
from tests.e2e.conftest import System, settled, user, wait_until


async def test_message_reaches_every_device_of_both_users(system: System) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    async with (
        system.connect(alice, "phone") as phone,
        system.connect(alice, "laptop") as laptop,
        system.connect(bob, "phone") as bob_phone,
    ):
        await settled(phone, laptop, bob_phone)
        ack = await phone.send_message(cid, "Hello, Bob! 👋")
        assert ack["conversation_id"] == cid and ack["message_id"].isdigit()
        for device in (phone, laptop, bob_phone):
            frame = await device.expect("message")
            message = frame["message"]
            assert message["message_id"] == ack["message_id"]
            assert (message["sender_id"], message["body"], message["kind"]) == (
                alice,
                "Hello, Bob! 👋",
                "text",
            )
            assert message["ts"] == ack["ts"]


async def test_history_pages_back_to_the_first_message(system: System) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    async with system.connect(alice) as client:
        acks = [await client.send_message(cid, f"m{i}") for i in range(120)]
    sent = [a["message_id"] for a in acks]
    assert [int(m) for m in sent] == sorted(int(m) for m in sent)

    async def everything() -> list[str] | None:
        """Every page back to the first; None while the history answers 503 ``unavailable``
        (the persist worker behind the hot tier's window: the protocol's "try again")."""
        seen: list[str] = []
        path = f"/v1/conversations/{cid}/messages?limit=25"
        while True:
            status, page = system.request("GET", path, user=bob)
            if status == 503:
                assert page["error"]["code"] == "unavailable", page
                return None
            assert status == 200, page
            seen = [m["message_id"] for m in page["messages"]] + seen
            if not page["has_more"]:
                return seen
            path = f"/v1/conversations/{cid}/messages?limit=25&before={page['messages'][0]['message_id']}"

    async def persisted() -> bool:
        return await everything() == sent

    await wait_until(persisted, timeout=10)  # the worker persists asynchronously
    assert await everything() == sent
    status, page = system.request(
        "GET", f"/v1/conversations/{cid}/messages?after={sent[9]}&limit=5", user=alice
    )
    assert status == 200 and [m["message_id"] for m in page["messages"]] == sent[10:15] and page["has_more"]
    status, page = system.request("GET", f"/v1/conversations/{cid}/messages?limit=1000", user=alice)
    assert len(page["messages"]) == 100 and page["has_more"]  # clamped to 100


async def test_retry_with_same_client_msg_id_over_ws_and_http_sends_once(system: System) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    async with system.connect(alice, "phone") as phone, system.connect(bob) as bob_ws:
        await settled(phone, bob_ws)
        first = await phone.send_message(cid, "once", client_msg_id="retry-1")
        again = await phone.send_message(cid, "once", client_msg_id="retry-1")
        assert again["message_id"] == first["message_id"]
        status, body = system.request(
            "POST",
            f"/v1/conversations/{cid}/messages",
            user=alice,
            body={"client_msg_id": "retry-1", "body": "once"},
        )
        assert status == 202 and body["message_id"] == first["message_id"]
        await bob_ws.expect("message")
        marker = await phone.send_message(cid, "after")
        frame = await bob_ws.expect("message")
        assert frame["message"]["message_id"] == marker["message_id"]  # no second copy in between
    status, page = system.request("GET", f"/v1/conversations/{cid}/messages", user=bob)
    assert [m["body"] for m in page["messages"]] == ["once", "after"]


async def test_http_send_and_direct_conversation(system: System) -> None:
    alice, bob = user(), user()
    status, body = system.request(
        "POST", "/v1/conversations", user=alice, body={"kind": "direct", "members": [bob]}
    )
    assert status == 200
    cid = body["conversation"]["conversation_id"]
    assert cid == direct_conversation_id(alice, bob)
    assert body["conversation"]["last_message"] is None
    status, sent = system.request(
        "POST", f"/v1/conversations/{cid}/messages", user=bob, body={"client_msg_id": "h1", "body": "hey"}
    )
    assert status == 202 and set(sent) == {"message_id", "conversation_id", "ts"}

    def last_message() -> Any:
        _, body = system.request("GET", f"/v1/conversations/{cid}", user=alice)
        return body["conversation"]["last_message"]

    last_message_seen = await wait_until(last_message)
    assert last_message_seen["message_id"] == sent["message_id"]
    assert last_message_seen["preview"] == "hey"
