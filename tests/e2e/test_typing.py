"""Typing indicators: to the members viewing the conversation, never to others, never stored,
rate-limited per socket."""

from __future__ import annotations

from events import direct_conversation_id
from tests.e2e.conftest import FANOUT_THRESHOLD, System, settled, user
from tests.e2e.test_groups import create_group


async def test_direct_chat_typing_reaches_only_the_viewing_device(system: System) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    async with (
        system.connect(alice, "phone") as alice_phone,
        system.connect(alice, "laptop") as alice_laptop,
        system.connect(bob, "phone") as bob_viewing,
        system.connect(bob, "tablet") as bob_elsewhere,
    ):
        for client in (alice_laptop, bob_viewing):
            await client.send({"type": "view", "conversation_id": cid})
        await settled(alice_phone, alice_laptop, bob_viewing, bob_elsewhere)
        await alice_phone.send({"type": "typing", "conversation_id": cid, "state": "start"})
        frame = await bob_viewing.expect("typing")
        assert frame == {"type": "typing", "conversation_id": cid, "user_id": alice, "state": "start"}
        await bob_elsewhere.expect_none("typing")
        await alice_laptop.expect_none("typing")  # never to the typist's own devices


async def test_group_typing_in_both_modes_and_strangers_refused(system: System) -> None:
    for extra in (0, FANOUT_THRESHOLD + 1):
        owner, member, stranger = user(), user(), user()
        cid = create_group(system, owner, [member, *(user() for _ in range(extra))])
        async with (
            system.connect(owner) as owner_ws,
            system.connect(member) as member_ws,
            system.connect(stranger) as stranger_ws,
        ):
            await settled(owner_ws, member_ws, stranger_ws)
            await member_ws.send({"type": "view", "conversation_id": cid})
            await stranger_ws.send({"type": "view", "ref": "v", "conversation_id": cid})
            assert (await stranger_ws.expect("error", ref="v"))["code"] == "forbidden"
            await stranger_ws.send({"type": "typing", "ref": "t", "conversation_id": cid, "state": "start"})
            assert (await stranger_ws.expect("error", ref="t"))["code"] == "forbidden"
            await member_ws.settled()  # its view is applied
            await owner_ws.send({"type": "typing", "conversation_id": cid, "state": "start"})
            assert (await member_ws.expect("typing"))["user_id"] == owner
            await member_ws.send({"type": "view", "conversation_id": None})
            await member_ws.settled()
            await owner_ws.send({"type": "typing", "conversation_id": cid, "state": "stop"})
            await member_ws.expect_none("typing")


async def test_typing_is_rate_limited_per_socket(system: System) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    async with system.connect(alice) as client:
        for i in range(8):
            await client.send({"type": "typing", "ref": f"t{i}", "conversation_id": cid, "state": "start"})
        error = await client.expect("error")
        assert error["code"] == "rate_limited"
        await client.send({"type": "ping", "ref": "p"})
        await client.expect("pong", ref="p")  # the socket stays open
