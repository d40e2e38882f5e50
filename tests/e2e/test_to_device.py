"""To-device messages over the running system, with real Olm ciphertext from vodozemac: relayed
live to the one device they are for, kept for its sync until it syncs past them, bounded per
device, and bad input refused with nothing queued."""

from __future__ import annotations

import base64
from typing import Any

import vodozemac

from tests.e2e.conftest import System, user
from tests.e2ee_support import Device


def _publish(system: System, who: str, device_id: str, device: Device, n: int = 1) -> None:
    token = system.token(who, device_id)
    assert system.request("PUT", "/v1/keys/device", token=token, body=device.device_keys())[0] == 200
    body = {"keys": device.one_time_keys(n)}
    assert system.request("POST", "/v1/keys/one-time", token=token, body=body)[0] == 200


def _olm_message(sender: Device, recipient: Device, key: str, plaintext: bytes) -> str:
    session = sender.account.create_outbound_session(
        vodozemac.Curve25519PublicKey.from_base64(recipient.identity_key),
        vodozemac.Curve25519PublicKey.from_base64(key),
    )
    _, body = session.encrypt(plaintext).to_parts()
    return base64.b64encode(body).decode()


def _sync(system: System, who: str, device_id: str, since: str | None = None) -> dict[str, Any]:
    query = f"?since={since}" if since else ""
    status, page = system.request("GET", f"/v1/sync{query}", token=system.token(who, device_id))
    assert status == 200, page
    return page


async def test_a_to_device_message_reaches_only_its_device_live_and_in_sync(system: System) -> None:
    alice, bob = user(), user()
    phone, bobs_d1, bobs_d2 = Device(), Device(), Device()
    _publish(system, alice, "phone", phone)
    _publish(system, bob, "d1", bobs_d1)
    _publish(system, bob, "d2", bobs_d2)
    status, claimed = system.request(
        "POST", "/v1/keys/claim", user=alice, body={"devices": [{"user_id": bob, "device_id": "d1"}]}
    )
    (key,) = claimed["keys"]
    ciphertext = _olm_message(phone, bobs_d1, key["key"], b"the room key")
    async with system.connect(bob, "d1") as d1, system.connect(bob, "d2") as d2:
        body = {
            "messages": [{"user_id": bob, "device_id": "d1", "type": "m.olm.v1", "ciphertext": ciphertext}]
        }
        status, answer = system.request(
            "POST", "/v1/to-device", token=system.token(alice, "phone"), body=body
        )
        assert status == 202 and answer == {"relayed": 1}
        frame = await d1.expect("to_device")
        assert frame == {
            "type": "to_device",
            "sender_id": alice,
            "sender_device": "phone",
            "type_of": "m.olm.v1",
            "ciphertext": ciphertext,
        }
        await d2.expect_none("to_device")
    # Bob's d1 reads it: the server relayed real Olm ciphertext unchanged.
    message = vodozemac.AnyOlmMessage.from_parts(0, base64.b64decode(frame["ciphertext"]))
    _, plaintext = bobs_d1.account.create_inbound_session(phone.account.curve25519_key, message.to_pre_key())
    assert plaintext == b"the room key"

    first = _sync(system, bob, "d1")
    assert [m["ciphertext"] for m in first["to_device"]] == [ciphertext]
    assert _sync(system, bob, "d2")["to_device"] == []
    # Synced from a cursor past it, it is gone; the same cursor again still shows nothing new.
    second = _sync(system, bob, "d1", first["cursor"])
    assert second["to_device"] == []
    assert _sync(system, bob, "d1", second["cursor"])["to_device"] == []
    # Acknowledged by that cursor, it is gone for good: a fresh start does not bring it back.
    assert _sync(system, bob, "d1")["to_device"] == []


def test_at_most_1000_wait_per_device_the_oldest_dropped(system: System) -> None:
    alice, bob = user(), user()
    _publish(system, alice, "phone", Device())
    _publish(system, bob, "d1", Device())
    token = system.token(alice, "phone")
    for batch in range(11):  # 1,100 messages
        body = {
            "messages": [
                {"user_id": bob, "device_id": "d1", "type": "t", "ciphertext": f"c{batch * 100 + i}"}
                for i in range(100)
            ]
        }
        assert system.request("POST", "/v1/to-device", token=token, body=body)[0] == 202
    seen: list[str] = []
    page = _sync(system, bob, "d1")
    seen += [m["ciphertext"] for m in page["to_device"]]
    while page["has_more"]:
        page = _sync(system, bob, "d1", page["cursor"])
        seen += [m["ciphertext"] for m in page["to_device"]]
    assert seen == [f"c{i}" for i in range(100, 1100)]


def test_bad_to_device_input_is_refused_and_nothing_is_queued(system: System) -> None:
    alice, bob = user(), user()
    _publish(system, alice, "phone", Device())
    _publish(system, bob, "d1", Device())
    token = system.token(alice, "phone")

    def one(**change: Any) -> dict[str, Any]:
        return {"user_id": bob, "device_id": "d1", "type": "m.olm.v1", "ciphertext": "AAAA", **change}

    cases: list[tuple[Any, int]] = [
        (b"{nope", 400),
        ({"messages": []}, 400),
        ({"messages": "x"}, 400),
        ({"messages": [one(ciphertext="")]}, 400),
        ({"messages": [one(device_id="bad id!")]}, 400),
        ({"messages": [one(type="")]}, 400),
        ({"messages": [one() for _ in range(101)]}, 400),
        ({"messages": [one(), one(ciphertext="x" * (64 * 1024 + 1))]}, 413),
        ({"messages": [one(), one(device_id="nokeys")]}, 404),
        ({"messages": [one(user_id=user())]}, 404),
    ]
    for body, code in cases:
        raw = body if isinstance(body, bytes) else None
        status, err = system.request(
            "POST", "/v1/to-device", token=token, raw=raw, body=None if raw is not None else body
        )
        assert status == code, (body if len(str(body)) < 300 else code, err)
    assert system.request("POST", "/v1/to-device", raw=b"{}")[0] == 401
    assert _sync(system, bob, "d1")["to_device"] == []
    status, err = system.request("GET", "/v1/sync?since=1.AA~x-y", token=system.token(bob, "d1"))
    assert status == 400 and err["error"]["code"] == "invalid"
