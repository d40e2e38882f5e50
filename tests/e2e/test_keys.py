"""The key directory of end-to-end encryption over HTTP, with real keys made by vodozemac:
publish, list, claim and count; a real Olm session built from what a claim hands out; bad input
on every endpoint refused with nothing stored; one-time keys never handed out twice to many
concurrent claimers on two gateway processes; and the directory rebuilt from the key topic of
the log equal to the live one."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import vodozemac

from archive.adapters.kafka_source import KafkaLogSource
from events import KeyEvent, Topics, decode_event
from projections.adapters.cql import Cql, connect_to
from projections.adapters.migrate import migrate_cassandra
from projections.keys import CassandraKeys
from tests.e2e.conftest import Gateway, System, user
from tests.e2ee_support import Device


def _request(system: System, base: str, method: str, path: str, who: str, device: str, body: Any) -> Any:
    req = urllib.request.Request(f"{base}{path}", data=orjson.dumps(body), method=method)
    req.add_header("Authorization", f"Bearer {system.token(who, device)}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


def _publish(
    system: System, who: str, device_id: str, device: Device, n: int, *, fallback: bool = False
) -> None:
    token = system.token(who, device_id)
    status, _ = system.request("PUT", "/v1/keys/device", token=token, body=device.device_keys())
    assert status == 200
    body: dict[str, Any] = {"keys": device.one_time_keys(n)}
    if fallback:
        body["fallback"] = device.fallback_key()
    status, answer = system.request("POST", "/v1/keys/one-time", token=token, body=body)
    assert status == 200 and answer == {"remaining": n}, answer


def test_publish_list_claim_and_an_olm_session_from_the_claimed_key(system: System) -> None:
    alice, bob = user(), user()
    phone, laptop, bobs = Device(), Device(), Device()
    _publish(system, alice, "phone", phone, 3, fallback=True)
    _publish(system, alice, "laptop", laptop, 1)

    status, listed = system.request("GET", f"/v1/keys/users/{alice}", user=bob)
    assert status == 200 and listed["user_id"] == alice
    by_device = {d["device_id"]: d for d in listed["devices"]}
    assert by_device == {
        "phone": {"device_id": "phone", **phone.device_keys()},
        "laptop": {"device_id": "laptop", **laptop.device_keys()},
    }
    # Publishing the same keys again is a retry (200); other keys for the device are 409.
    again = system.request(
        "PUT", "/v1/keys/device", token=system.token(alice, "phone"), body=phone.device_keys()
    )
    assert again == (200, {})
    status, err = system.request(
        "PUT", "/v1/keys/device", token=system.token(alice, "phone"), body=Device().device_keys()
    )
    assert status == 409 and err["error"]["code"] == "conflict"

    status, claimed = system.request(
        "POST",
        "/v1/keys/claim",
        user=bob,
        body={"devices": [{"user_id": alice, "device_id": "phone"}, {"user_id": alice, "device_id": "none"}]},
    )
    assert status == 200
    (key,) = claimed["keys"]
    assert key["user_id"] == alice and key["device_id"] == "phone" and key["fallback"] is False
    assert key in [{"user_id": alice, "device_id": "phone", **k, "fallback": False} for k in phone.uploaded]
    status, count = system.request("GET", "/v1/keys/count", token=system.token(alice, "phone"))
    assert status == 200 and count == {"remaining": 2}

    # The claimed key is a real Olm one-time key: bob's device opens a session with it and
    # alice's phone reads the first message.
    outbound = bobs.account.create_outbound_session(
        vodozemac.Curve25519PublicKey.from_base64(by_device["phone"]["identity_key"]),
        vodozemac.Curve25519PublicKey.from_base64(key["key"]),
    )
    message = outbound.encrypt(b"first words")
    _, plaintext = phone.account.create_inbound_session(bobs.account.curve25519_key, message.to_pre_key())
    assert plaintext == b"first words"

    # Deleted keys are gone from the directory, one-time and fallback keys with them.
    status, _ = system.request("DELETE", "/v1/keys/device", token=system.token(alice, "phone"))
    assert status == 204
    status, listed = system.request("GET", f"/v1/keys/users/{alice}", user=bob)
    assert [d["device_id"] for d in listed["devices"]] == ["laptop"]
    status, claimed = system.request(
        "POST", "/v1/keys/claim", user=bob, body={"devices": [{"user_id": alice, "device_id": "phone"}]}
    )
    assert status == 200 and claimed == {"keys": []}


def test_hostile_input_on_every_key_endpoint_is_refused_and_stores_nothing(system: System) -> None:
    alice, device = user(), Device()
    token = system.token(alice, "d1")
    good = device.device_keys()
    bad_device_bodies: list[Any] = [
        b"{not json",
        b"[1, 2]",
        {"identity_key": good["identity_key"]},
        {**good, "identity_key": good["identity_key"] + "="},
        {**good, "identity_key": "%%%" + good["identity_key"][3:]},
        {**good, "identity_key": good["identity_key"][:-3]},
        {**good, "signing_key": good["signing_key"] + "AAAA"},
        {**good, "signature": good["signature"][:-4]},
        {**good, "signature": Device().sign(good["identity_key"])},
        {**good, "identity_key": "A" * 5000},
        {**good, "identity_key": 42},
    ]
    for body in bad_device_bodies:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        status, err = system.request("PUT", "/v1/keys/device", token=token, raw=raw)
        assert status == 400 and err["error"]["code"] == "invalid", (body, err)
    status, listed = system.request("GET", f"/v1/keys/users/{alice}", user=alice)
    assert listed["devices"] == []

    # One-time keys before the device's keys: 409, nothing stored.
    status, err = system.request(
        "POST", "/v1/keys/one-time", token=token, body={"keys": device.one_time_keys(1)}
    )
    assert status == 409 and err["error"]["code"] == "conflict"
    assert system.request("PUT", "/v1/keys/device", token=token, body=good)[0] == 200
    keys = device.one_time_keys(3)
    bad_key_bodies: list[Any] = [
        {"keys": "nope"},
        {"keys": [{**keys[0], "key": keys[0]["key"][:-3]}]},
        {"keys": [keys[0], {**keys[1], "signature": Device().sign(keys[1]["key"])}]},
        {"keys": [keys[0], keys[0]]},
        {"keys": [{**keys[0], "key_id": "x" * 65}]},
        {"keys": [{**k, "key_id": f"{i}"} for i, k in enumerate(keys * 34)]},  # 102 keys
        {"keys": [], "fallback": {**keys[2], "signature": keys[1]["signature"]}},
    ]
    for body in bad_key_bodies:
        status, err = system.request("POST", "/v1/keys/one-time", token=token, body=body)
        assert status == 400 and err["error"]["code"] == "invalid", (body, err)
    assert system.request("GET", "/v1/keys/count", token=token) == (200, {"remaining": 0})
    assert system.request("POST", "/v1/keys/one-time", token=token, body={"keys": keys[:2]}) == (
        200,
        {"remaining": 2},
    )
    status, err = system.request("POST", "/v1/keys/one-time", token=token, body={"keys": keys[1:]})
    assert status == 409 and err["error"]["code"] == "conflict"  # key id AAAAAAAAAAE again
    assert system.request("GET", "/v1/keys/count", token=token) == (200, {"remaining": 2})
    # Another device's keys cannot be changed: the token's device is the only one named.
    other = system.token(alice, "d2")
    status, err = system.request("POST", "/v1/keys/one-time", token=other, body={"keys": keys[2:]})
    assert status == 409

    for body in (
        {"devices": "x"},
        {"devices": [{"user_id": alice}]},
        {"devices": [{"user_id": alice, "device_id": "bad id!"}]},
        {"devices": [{"user_id": alice, "device_id": f"d{i}"} for i in range(101)]},
    ):
        status, err = system.request("POST", "/v1/keys/claim", user=alice, body=body)
        assert status == 400 and err["error"]["code"] == "invalid", (body, err)
    unknown = {"devices": [{"user_id": user(), "device_id": "d1"}, {"user_id": alice, "device_id": "nope"}]}
    assert system.request("POST", "/v1/keys/claim", user=alice, body=unknown) == (200, {"keys": []})
    assert system.request("GET", "/v1/keys/users/bad%20id", user=alice)[0] == 400
    for method, path in (("GET", "/v1/keys/count"), ("PUT", "/v1/keys/device"), ("POST", "/v1/keys/claim")):
        assert system.request(method, path, raw=b"{}")[0] == 401
    assert system.request("GET", "/v1/keys/count", token=token) == (200, {"remaining": 2})


def test_two_gateways_and_many_concurrent_claimers_never_get_a_key_twice(system: System) -> None:
    owner, device = user(), Device()
    keys_n, claimers = 60, 120
    _publish(system, owner, "d1", device, keys_n, fallback=True)
    first, second = Gateway(system, "keys-a"), Gateway(system, "keys-b")
    try:

        def claim(i: int) -> Any:
            base = first.http if i % 2 else second.http
            body = {"devices": [{"user_id": owner, "device_id": "d1"}]}
            return _request(system, base, "POST", "/v1/keys/claim", f"c{uuid.uuid4().hex[:8]}", "d", body)

        with ThreadPoolExecutor(max_workers=24) as pool:
            answers = list(pool.map(claim, range(claimers)))
    finally:
        first.stop()
        second.stop()
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    handed = [k for _, answer in answers for k in answer["keys"]]
    assert len(handed) == claimers  # every claimer got a key: a one-time key or the fallback
    one_time = [k["key"] for k in handed if not k["fallback"]]
    assert len(one_time) == len(set(one_time)) == keys_n  # each one-time key once, all of them
    assert set(one_time) == {k["key"] for k in device.uploaded}
    assert {k["key_id"] for k in handed if k["fallback"]} == {"AAAAAAAAAAA"} and len(handed) - keys_n == 60
    assert system.request("GET", "/v1/keys/count", token=system.token(owner, "d1")) == (200, {"remaining": 0})


async def _key_events(system: System, users: set[str]) -> list[KeyEvent]:
    settings = system.settings
    topic = Topics(settings.topic_prefix).key_events
    out: list[KeyEvent] = []
    async with KafkaLogSource(settings.kafka_bootstrap, topic, settings.topic_partitions) as source:
        starts, ends = await source.beginning_offsets(), await source.end_offsets()
        async for batch in source.read(starts, ends):
            for record in batch:
                event = decode_event(record.value)
                assert isinstance(event, KeyEvent)
                if event.user_id in users:
                    out.append(event)
    return out


async def _dump(cql: Cql, users: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for uid in sorted(users):
        devices = await cql.execute("SELECT * FROM {ks}.device_keys WHERE user_id = ?", (uid,))
        out[f"devices {uid}"] = sorted(tuple(r) for r in devices)
        for did in ("d1", "d2", "phone", "laptop"):
            for table in ("one_time_keys", "fallback_keys"):
                rows = await cql.execute(
                    f"SELECT * FROM {{ks}}.{table} WHERE user_id = ? AND device_id = ?", (uid, did)
                )
                out[f"{table} {uid} {did}"] = sorted(tuple(r) for r in rows)
    return out


async def test_the_key_directory_rebuilt_from_the_log_equals_the_live_one(system: System) -> None:
    alice, bob = user(), user()
    phone, laptop = Device(), Device()
    _publish(system, alice, "phone", phone, 4, fallback=True)
    _publish(system, alice, "laptop", laptop, 2)
    _publish(system, bob, "d1", Device(), 1)
    for _ in range(3):
        body = {"devices": [{"user_id": alice, "device_id": "phone"}, {"user_id": bob, "device_id": "d1"}]}
        assert system.request("POST", "/v1/keys/claim", user=bob, body=body)[0] == 200
    assert system.request("DELETE", "/v1/keys/device", token=system.token(alice, "laptop"))[0] == 204
    _publish(system, alice, "laptop", Device(), 2)  # new keys after the deletion, same key ids

    users = {alice, bob}
    events = await _key_events(system, users)
    # 3 devices published with keys (2 events each), 4 one-time keys claimed (bob's only key once,
    # no fallback), a deletion, and the laptop published again (2)
    assert len(events) == 6 + 4 + 1 + 2
    settings = system.settings
    rebuild_ks = settings.cassandra_keyspace + "_keys_rebuild"
    loop = asyncio.get_running_loop()
    cluster, session = await loop.run_in_executor(None, connect_to, settings)
    try:
        await loop.run_in_executor(
            None,
            lambda: migrate_cassandra(
                session, rebuild_ks, replication=settings.cassandra_replication_map(), echo=lambda _: None
            ),
        )
        rebuilt = CassandraKeys(Cql(session, rebuild_ks))
        rebuilt.prepare()
        await rebuilt.apply(events)  # the whole log in one pass, as a replay applies it
        live = Cql(session, settings.cassandra_keyspace)
        assert await _dump(live, users) == await _dump(Cql(session, rebuild_ks), users)
        # And right: what the API shows is what the rebuilt directory holds.
        assert await rebuilt.remaining(alice, "phone") == 1
        assert [d.device_id for d in await rebuilt.devices(alice)] == ["laptop", "phone"]
    finally:
        cluster.shutdown()
