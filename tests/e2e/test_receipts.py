"""Receipts: watermarks that only move forward, frames to the members' devices, the query,
and the inbox's unread count following the read watermark."""

from __future__ import annotations

from typing import Any

from events import direct_conversation_id
from tests.e2e.conftest import FANOUT_THRESHOLD, Client, System, settled, user, wait_until
from tests.e2e.test_groups import create_group


async def receipts(system: System, cid: str, who: str, want: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{user_id: (delivered, read)}``, waiting (briefly) for ``want`` to show."""
    got: dict[str, Any] = {}

    def shown() -> bool:
        nonlocal got
        status, body = system.request("GET", f"/v1/conversations/{cid}/receipts", user=who)
        assert status == 200, body
        got = {r["user_id"]: (r["delivered"], r["read"]) for r in body["receipts"]}
        return want is None or got == want

    await wait_until(shown)
    return got


async def _receipt_frame(client: Client, status: str) -> dict[str, Any]:
    return await client.expect("receipt", status=status)


async def test_receipts_move_forward_only_and_reach_every_device(system: System) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    async with (
        system.connect(alice, "phone") as alice_phone,
        system.connect(alice, "laptop") as alice_laptop,
        system.connect(bob, "phone") as bob_phone,
        system.connect(bob, "tablet") as bob_tablet,
    ):
        await settled(alice_phone, alice_laptop, bob_phone, bob_tablet)
        m1 = (await alice_phone.send_message(cid, "one"))["message_id"]
        m2 = (await alice_phone.send_message(cid, "two"))["message_id"]
        await bob_phone.send(
            {"type": "receipt", "conversation_id": cid, "message_id": m1, "status": "delivered"}
        )
        for device in (alice_phone, alice_laptop, bob_tablet):
            frame = await _receipt_frame(device, "delivered")
            assert (frame["user_id"], frame["message_id"], frame["conversation_id"]) == (bob, m1, cid)
        # read implies delivered
        status, _ = system.request(
            "POST", f"/v1/conversations/{cid}/receipts", user=bob, body={"message_id": m2, "status": "read"}
        )
        assert status == 202
        frame = await _receipt_frame(alice_laptop, "read")
        assert frame["message_id"] == m2
        got = await receipts(system, cid, alice, {bob: (m2, m2), alice: (m2, m2)})
        assert got == {bob: (m2, m2), alice: (m2, m2)}
        # going back changes nothing and sends nothing
        await bob_phone.send(
            {"type": "receipt", "ref": "back", "conversation_id": cid, "message_id": m1, "status": "read"}
        )
        await bob_phone.send({"type": "ping", "ref": "after"})
        await bob_phone.expect("pong", ref="after")
        assert not [f for f in bob_phone.backlog if f["type"] == "error"]
        await alice_phone.expect_none("receipt", message_id=m1, status="read")
        assert (await receipts(system, cid, bob))[bob] == (m2, m2)


async def test_unread_count_follows_the_read_watermark(system: System) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    async with system.connect(alice) as alice_ws:
        ids = [(await alice_ws.send_message(cid, f"m{i}"))["message_id"] for i in range(5)]

    def unread() -> int:
        status, body = system.request("GET", f"/v1/conversations/{cid}", user=bob)
        assert status == 200
        return int(body["conversation"]["unread_count"])

    await wait_until(lambda: unread() == 5)
    assert unread() == 5
    system.request(
        "POST", f"/v1/conversations/{cid}/receipts", user=bob, body={"message_id": ids[2], "status": "read"}
    )
    await wait_until(lambda: unread() == 2)
    assert unread() == 2


async def test_large_groups_have_receipts_by_query_only(system: System) -> None:
    owner, reader = user(), user()
    cid = create_group(system, owner, [reader, *(user() for _ in range(FANOUT_THRESHOLD + 1))])
    async with system.connect(owner) as owner_ws, system.connect(reader) as reader_ws:
        await settled(owner_ws, reader_ws)
        mid = (await owner_ws.send_message(cid, "big news"))["message_id"]
        await reader_ws.expect("message")
        await reader_ws.send({"type": "receipt", "conversation_id": cid, "message_id": mid, "status": "read"})
        got = await receipts(system, cid, owner, {reader: (mid, mid), owner: (mid, mid)})
        assert got == {reader: (mid, mid), owner: (mid, mid)}  # the sender has read their own
        await owner_ws.expect_none("receipt")


async def test_bad_receipts(system: System) -> None:
    alice, bob, eve = user(), user(), user()
    cid = direct_conversation_id(alice, bob)
    for who, body, status, code in [
        (alice, {"message_id": "abc", "status": "read"}, 400, "invalid"),
        (alice, {"message_id": "1", "status": "seen"}, 400, "invalid"),
        (alice, {"message_id": str(2**62), "status": "read"}, 400, "invalid"),  # far future
        (eve, {"message_id": "1", "status": "read"}, 403, "forbidden"),
    ]:
        got, payload = system.request("POST", f"/v1/conversations/{cid}/receipts", user=who, body=body)
        assert (got, payload["error"]["code"]) == (status, code), body
    got, payload = system.request("GET", f"/v1/conversations/{cid}/receipts", user=eve)
    assert got == 403
    async with system.connect(eve) as client:
        await client.send(
            {"type": "receipt", "ref": "r", "conversation_id": cid, "message_id": "1", "status": "read"}
        )
        assert (await client.expect("error", ref="r"))["code"] == "forbidden"
