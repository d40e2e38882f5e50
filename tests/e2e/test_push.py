"""Push notifications to offline devices, over the running system (gateway, workers with the
notify role) and a real webhook receiver: registration rules, one coalesced notification per
burst, online devices get frames instead, mutes, priority, badge, retries and 410."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import http_ece
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from events import direct_conversation_id
from tests.e2e import media_support
from tests.e2e.conftest import System, user, wait_until
from tests.e2e.consumers import push_settled
from tests.e2e.push_fakes import FakeApns, FakeFcm, Recorded
from tests.e2e.push_load import kill_notify_under_load
from tests.e2e.push_receiver import Receiver, signature_ok


async def until_unregistered(system: System, *devices: tuple[str, str]) -> None:
    """Until the push settings read model has no registration for each ``(user, device)``."""
    from projections.adapters.cql import Cql, connect_to
    from projections.push import CassandraPushSettings

    cluster, session = await asyncio.to_thread(connect_to, system.settings)
    try:
        model = CassandraPushSettings(Cql(session, system.settings.cassandra_keyspace))
        model.prepare()

        async def gone() -> bool:
            found = [await model.registration(u, d) for u, d in devices]
            return all(r is None for r in found)

        assert await wait_until(gone), f"still registered: {devices}"
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def register(system: System, who: str, device: str, body: Mapping[str, object]) -> tuple[int, Any]:
    return system.request("PUT", f"/v1/devices/{device}/push", token=system.token(who, device), body=body)


def webhook(system: System, receiver: Receiver, who: str, device: str, kind: str = "ok") -> str:
    name = f"{who}-{device}"
    status, payload = register(
        system, who, device, {"provider": "webhook", "endpoint": receiver.url(kind, name)}
    )
    assert status == 200, payload
    assert payload == {"device_id": device, "provider": "webhook"}
    return name


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_registration_and_settings_rules(system: System) -> None:
    me, other = user(), user()
    ok = {"provider": "webhook", "endpoint": "http://127.0.0.1:9/hook"}
    assert register(system, me, "phone", ok)[0] == 200
    # another device's id
    status, payload = system.request(
        "PUT", "/v1/devices/tablet/push", token=system.token(me, "phone"), body=ok
    )
    assert status == 403 and payload["error"]["code"] == "forbidden"
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    for body in (
        {"provider": "webhook", "endpoint": "http://10.1.2.3/hook"},  # host not allowed
        {"provider": "webhook", "endpoint": "http://169.254.169.254/latest/meta-data"},
        {"provider": "webhook", "endpoint": "gopher://127.0.0.1/x"},
        {"provider": "webhook"},
        {"provider": "carrier-pigeon", "endpoint": "http://127.0.0.1/x"},
        {
            "provider": "webpush",
            "endpoint": "https://fcm.googleapis.com/x",
            "keys": {"p256dh": "AAAA", "auth": "x"},
        },
        {
            "provider": "webpush",
            "endpoint": "https://10.0.0.1/x",
            "keys": {"p256dh": _b64(point), "auth": _b64(b"a" * 16)},
        },
        {"provider": "fcm", "token": "no"},
        {"provider": "apns", "token": "not-hex" * 10},
    ):
        status, payload = register(system, me, "phone", body)
        assert status == 400 and payload["error"]["code"] == "invalid", (body, payload)
    good_webpush = {
        "provider": "webpush",
        "endpoint": "http://127.0.0.1:9/push/abc",  # the e2e system allows the test's push service
        "keys": {"p256dh": _b64(point), "auth": _b64(b"a" * 16)},
    }
    assert register(system, me, "laptop", good_webpush) == (
        200,
        {"device_id": "laptop", "provider": "webpush"},
    )
    status, _ = system.request("DELETE", "/v1/devices/phone/push", token=system.token(me, "phone"))
    assert status == 204
    status, _ = system.request("DELETE", "/v1/devices/phone/push", token=system.token(me, "tablet"))
    assert status == 403
    cid = direct_conversation_id(me, other)
    path = f"/v1/conversations/{cid}/settings"
    assert system.request("PUT", path, user=me, body={"muted": True}) == (
        200,
        {"conversation_id": cid, "muted": True},
    )
    assert system.request("PUT", path, user=me, body={"muted": "yes"})[0] == 400
    stranger = system.request("PUT", path, user=user(), body={"muted": True})
    assert stranger[0] == 403
    unknown = system.request("PUT", "/v1/conversations/g:12345/settings", user=me, body={"muted": True})
    assert unknown[0] == 404


async def test_offline_device_gets_one_coalesced_notification(system: System, receiver: Receiver) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    name = webhook(system, receiver, bob, "phone")
    async with system.connect(alice) as a:
        acks = [await a.send_message(cid, f"burst {i}") for i in range(5)]
    [post] = await asyncio.to_thread(receiver.wait, "ok", name)
    await push_settled(system, [cid], [bob])
    assert len(receiver.to("ok", name)) == 1, "a burst is one notification"
    assert signature_ok(system.settings.resolved_push_webhook_secret(), post)
    note = post.json
    assert note["user_id"] == bob and note["device_id"] == "phone"
    assert note["priority"] == "high"  # a direct conversation
    assert note["badge"] == 5
    assert note["conversations"] == [
        {
            "conversation_id": cid,
            "count": 5,
            "last_message_id": acks[-1]["message_id"],
            "sender_id": alice,
            "preview": "burst 4",
        }
    ]
    assert len(note["notification_id"]) == 32


async def test_online_device_gets_frames_not_notifications(system: System, receiver: Receiver) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    phone = webhook(system, receiver, bob, "phone")
    tablet = webhook(system, receiver, bob, "tablet")
    own = webhook(system, receiver, alice, "laptop")  # the sender's own other device
    async with system.connect(bob, "phone") as b, system.connect(alice) as a:
        await b.settled()  # the socket is in the presence store (before it reads frames)
        ack = await a.send_message(cid, "are you there?")
        frame = await b.expect("message")
        assert frame["message"]["message_id"] == ack["message_id"]
        [post] = await asyncio.to_thread(receiver.wait, "ok", tablet)  # the offline device
        assert post.json["conversations"][0]["last_message_id"] == ack["message_id"]
        await push_settled(system, [cid], [bob, alice])
    assert receiver.to("ok", phone) == [], "a device with an open socket gets no notification"
    assert receiver.to("ok", own) == [], "nobody is notified of their own message"


async def test_mute_and_group_priority(system: System, receiver: Receiver) -> None:
    alice, bob, carol = user(), user(), user()
    status, payload = system.request(
        "POST", "/v1/conversations", user=alice, body={"kind": "group", "title": "T", "members": [bob, carol]}
    )
    assert status == 201
    gid = payload["conversation"]["conversation_id"]
    to_bob = webhook(system, receiver, bob, "phone")
    to_carol = webhook(system, receiver, carol, "phone")
    assert (
        system.request("PUT", f"/v1/conversations/{gid}/settings", user=carol, body={"muted": True})[0] == 200
    )
    async with system.connect(alice) as a:
        await a.send_message(gid, "x" * 150)
        [post] = await asyncio.to_thread(receiver.wait, "ok", to_bob)
        assert post.json["priority"] == "normal"
        assert post.json["conversations"][0]["preview"] == "x" * 100
        await push_settled(system, [gid], [carol])
        assert receiver.to("ok", to_carol) == [], "muted"
        assert (
            system.request("PUT", f"/v1/conversations/{gid}/settings", user=carol, body={"muted": False})[0]
            == 200
        )
        await a.send_message(gid, "again")
        [post] = await asyncio.to_thread(receiver.wait, "ok", to_carol)
        assert post.json["conversations"][0]["preview"] == "again"


async def test_gone_ends_the_registration_and_failures_are_retried(
    system: System, receiver: Receiver
) -> None:
    alice, bob, carol = user(), user(), user()
    gone = webhook(system, receiver, bob, "phone", kind="gone")
    flaky = webhook(system, receiver, carol, "phone", kind="flaky")
    async with system.connect(alice) as a:
        await a.send_message(direct_conversation_id(alice, bob), "one")
        await a.send_message(direct_conversation_id(alice, carol), "one")
        await asyncio.to_thread(receiver.wait, "gone", gone)
        # 500 first, then retried after the first backoff with the same notification id
        first, second = await asyncio.to_thread(receiver.wait, "flaky", flaky, 2)
        assert first.json["notification_id"] == second.json["notification_id"]
        assert first.json == second.json
        await until_unregistered(system, (bob, "phone"))  # the 410's unregistration
        await a.send_message(direct_conversation_id(alice, bob), "two")
        await push_settled(system, [direct_conversation_id(alice, bob)], [bob, carol])
    assert len(receiver.to("gone", gone)) == 1, "a 410 ends the registration"
    assert len(receiver.to("flaky", flaky)) == 2


async def test_web_push_round_trip(system: System, receiver: Receiver) -> None:
    """The test is the push service and the browser: it holds the subscription's P-256 key and
    auth secret, checks the VAPID token (RFC 8292) and decrypts the aes128gcm payload."""
    alice, bob = user(), user()
    browser = ec.generate_private_key(ec.SECP256R1())
    point = browser.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    secret = os.urandom(16)
    status, key = system.request("GET", "/v1/push/webpush-key", user=bob)
    assert status == 200
    name = f"wp-{bob}"
    subscription = {
        "provider": "webpush",
        "endpoint": receiver.url("ok", name),
        "keys": {"p256dh": _b64(point), "auth": _b64(secret)},
    }
    assert register(system, bob, "browser", subscription) == (
        200,
        {"device_id": "browser", "provider": "webpush"},
    )
    cid = direct_conversation_id(alice, bob)
    async with system.connect(alice) as a:
        acks = [await a.send_message(cid, f"hello {i}") for i in range(2)]
    [post] = await asyncio.to_thread(receiver.wait, "ok", name)
    assert post.headers["content-encoding"] == "aes128gcm"
    assert post.headers["urgency"] == "high"
    assert int(post.headers["ttl"]) > 0
    scheme, _, params = post.headers["authorization"].partition(" ")
    assert scheme == "vapid"
    fields = dict(p.split("=", 1) for p in params.split(","))
    assert fields["k"] == key["public_key"]
    vapid_key = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), base64.urlsafe_b64decode(fields["k"] + "=" * (-len(fields["k"]) % 4))
    )
    claims = jwt.decode(
        fields["t"], vapid_key, algorithms=["ES256"], audience=f"http://127.0.0.1:{receiver.port}"
    )
    assert claims["sub"].startswith("mailto:") and time.time() < claims["exp"] <= time.time() + 24 * 3600
    note = orjson.loads(
        http_ece.decrypt(post.body, private_key=browser, auth_secret=secret, version="aes128gcm")
    )
    assert note["user_id"] == bob and note["device_id"] == "browser" and note["priority"] == "high"
    assert note["conversations"][0]["count"] == 2
    assert note["conversations"][0]["last_message_id"] == acks[-1]["message_id"]
    assert note["conversations"][0]["preview"] == "hello 1"


@pytest.fixture(scope="module")
def mobile(system: System) -> Iterator[tuple[FakeFcm, FakeApns]]:
    fcm, apns = FakeFcm(system.push_fakes), FakeApns(system.push_fakes)
    yield fcm, apns
    fcm.close()
    apns.close()


def _wait(records: list[Recorded], match: Callable[[Recorded], bool], count: int = 1) -> list[Recorded]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = [r for r in list(records) if match(r)]
        if len(got) >= count:
            return got
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} matching requests: {records}")


async def test_fcm_and_apns_requests_are_well_formed(
    system: System, mobile: tuple[FakeFcm, FakeApns]
) -> None:
    fcm, apns = mobile
    alice, bob, carol = user(), user(), user()
    android = f"tok:{uuid.uuid4().hex}"
    iphone = "ab" + secrets.token_hex(31)
    assert register(system, bob, "android", {"provider": "fcm", "token": android})[0] == 200
    assert register(system, carol, "iphone", {"provider": "apns", "token": iphone})[0] == 200
    status, created = system.request(
        "POST", "/v1/conversations", user=alice, body={"kind": "group", "title": "T", "members": [carol]}
    )
    assert status == 201
    gid = created["conversation"]["conversation_id"]
    async with system.connect(alice) as a:
        ack = await a.send_message(direct_conversation_id(alice, bob), "hi bob")
        [sent] = await asyncio.to_thread(_wait, fcm.sends, lambda r: r.body["token"] == android)
        note = orjson.loads(sent.body["data"]["tidings"])
        assert sent.body["android"]["priority"] == "HIGH"
        assert note["user_id"] == bob and note["conversations"][0]["last_message_id"] == ack["message_id"]
        await a.send_message(gid, "hi group")
        [grouped] = await asyncio.to_thread(_wait, apns.sends, lambda r: r.headers[":path"].endswith(iphone))
        assert grouped.headers["apns-priority"] == "5"
        assert grouped.body["tidings"]["conversations"][0]["preview"] == "hi group"
        assert grouped.body["aps"]["badge"] == 1
        await a.send_message(direct_conversation_id(alice, carol), "hi carol")
        _, direct = await asyncio.to_thread(
            _wait, apns.sends, lambda r: r.headers[":path"].endswith(iphone), 2
        )
        assert direct.headers["apns-priority"] == "10"
        assert direct.headers["apns-collapse-id"] != grouped.headers["apns-collapse-id"]
        assert direct.body["aps"]["badge"] == 2
    assert fcm.problems == [] and apns.problems == []


async def test_fcm_404_and_apns_410_end_registrations(
    system: System, mobile: tuple[FakeFcm, FakeApns]
) -> None:
    fcm, apns = mobile
    alice, bob, carol = user(), user(), user()
    android = f"gone{uuid.uuid4().hex}"
    iphone = "dead" + secrets.token_hex(30)
    assert register(system, bob, "android", {"provider": "fcm", "token": android})[0] == 200
    assert register(system, carol, "iphone", {"provider": "apns", "token": iphone})[0] == 200
    async with system.connect(alice) as a:
        await a.send_message(direct_conversation_id(alice, bob), "one")
        await a.send_message(direct_conversation_id(alice, carol), "one")
        await asyncio.to_thread(_wait, fcm.sends, lambda r: r.body["token"] == android)
        await asyncio.to_thread(_wait, apns.sends, lambda r: r.headers[":path"].endswith(iphone))
        await until_unregistered(system, (bob, "android"), (carol, "iphone"))
        await a.send_message(direct_conversation_id(alice, bob), "two")
        await a.send_message(direct_conversation_id(alice, carol), "two")
        await push_settled(
            system, [direct_conversation_id(alice, bob), direct_conversation_id(alice, carol)], [bob, carol]
        )
    assert len([r for r in fcm.sends if r.body["token"] == android]) == 1
    assert len([r for r in apns.sends if r.headers[":path"].endswith(iphone)]) == 1


async def test_a_hanging_receiver_holds_no_other_device(system: System, receiver: Receiver) -> None:
    alice, bob, carol = user(), user(), user()
    hang = webhook(system, receiver, bob, "phone", kind="hang")
    ok = webhook(system, receiver, carol, "phone")
    async with system.connect(alice) as a:
        await a.send_message(direct_conversation_id(alice, bob), "into the void")
        await asyncio.to_thread(receiver.wait, "hang", hang)  # the sender is waiting on it now
        sent = time.time()
        await a.send_message(direct_conversation_id(alice, carol), "still here")
        [post] = await asyncio.to_thread(receiver.wait, "ok", ok)
    # the window (2 s) and the way through the log, not the hanging receiver's 5 s timeout
    assert post.at - sent < 4.5, post.at - sent
    # the hanging one is tried again after its timeout and the first backoff, same id
    first, second = await asyncio.to_thread(receiver.wait, "hang", hang, 2, 20)
    assert first.json["notification_id"] == second.json["notification_id"]


async def test_kill_9_of_the_notify_worker_loses_no_notification(system: System, receiver: Receiver) -> None:
    """The sender, then the notifier, then the sender again killed -9 under load and started
    again."""
    report = await kill_notify_under_load(
        system, receiver, kills=((3.0, "push"), (7.0, "notify"), (10.0, "push"))
    )
    print(report.line())
    assert report.acked > 0 and not report.problems, "\n".join([report.line(), *report.problems])
    assert report.notifications < report.acked, "messages were coalesced"


async def test_media_messages_get_no_preview(system: System, receiver: Receiver) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    name = webhook(system, receiver, bob, "phone")
    status, media = media_support.upload(system, alice, media_support.png(), "image/png")
    assert status == 201, media
    status, sent = system.request(
        "POST",
        f"/v1/conversations/{cid}/messages",
        user=alice,
        body={
            "client_msg_id": uuid.uuid4().hex,
            "kind": "image",
            "media_id": media["media_id"],
            "body": "caption",
        },
    )
    assert status == 202, sent
    [post] = await asyncio.to_thread(receiver.wait, "ok", name)
    [conversation] = post.json["conversations"]
    assert conversation["last_message_id"] == sent["message_id"]
    assert conversation["preview"] is None  # not the caption, nothing of the media
