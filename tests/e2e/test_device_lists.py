"""``device_list`` frames and ``device_lists`` in sync over the running system: when a user's
device keys are published or deleted, every connected device of everyone sharing a conversation
with them (and their own other devices) hears it, strangers do not, and a device that was away
finds the user in its next sync, once."""

from __future__ import annotations

from typing import Any

from events import direct_conversation_id
from tests.e2e.conftest import System, user
from tests.e2ee_support import Device


def _sync(system: System, who: str, device: str, since: str | None = None) -> dict[str, Any]:
    status, page = system.request(
        "GET", "/v1/sync" + (f"?since={since}" if since else ""), token=system.token(who, device)
    )
    assert status == 200, page
    return page


async def test_device_list_changes_reach_contacts_live_and_in_sync(system: System) -> None:
    alice, bob, carol, stranger = user(), user(), user(), user()
    status, _ = system.request(
        "POST", "/v1/conversations", user=bob, body={"kind": "direct", "members": [alice]}
    )
    assert status == 200
    status, _ = system.request(
        "POST", "/v1/conversations", user=carol, body={"kind": "group", "title": "g", "members": [alice]}
    )
    assert status == 201
    assert (
        system.request(
            "POST",
            f"/v1/conversations/{direct_conversation_id(alice, bob)}/messages",
            user=bob,
            body={"client_msg_id": "m1", "body": "hi"},
        )[0]
        == 202
    )
    # Bob's tablet is away; it synced once before the change.
    away = _sync(system, bob, "tablet")
    assert away["device_lists"] == []
    phone = Device()
    async with (
        system.connect(bob, "laptop") as bob_ws,
        system.connect(carol) as carol_ws,
        system.connect(alice, "laptop") as alice_other,
        system.connect(stranger) as stranger_ws,
    ):
        status, _ = system.request(
            "PUT", "/v1/keys/device", token=system.token(alice, "phone"), body=phone.device_keys()
        )
        assert status == 200
        for ws in (bob_ws, carol_ws, alice_other):
            assert (await ws.expect("device_list", timeout=20))["user_id"] == alice
        await stranger_ws.expect_none("device_list", within=1.5)
        # Deleting the device's keys is a change too.
        status, _ = system.request("DELETE", "/v1/keys/device", token=system.token(alice, "phone"))
        assert status == 204
        assert (await bob_ws.expect("device_list", timeout=20))["user_id"] == alice
    later = _sync(system, bob, "tablet", away["cursor"])
    assert later["device_lists"] == [alice]  # two changes, one user
    again = _sync(system, bob, "tablet", later["cursor"])
    assert again["device_lists"] == []
    assert (
        _sync(system, stranger, "default", _sync(system, stranger, "default")["cursor"])["device_lists"] == []
    )
    # A cursor that is not one this server returned is refused.
    status, refused = system.request("GET", f"/v1/sync?since={later['cursor']}!x-y", user=bob)
    assert status == 400 and refused["error"]["code"] == "invalid"
