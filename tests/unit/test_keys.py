"""The key directory's checks, with real keys from vodozemac: every bad upload is refused with
its protocol error and leaves nothing behind (no event, no row)."""

from __future__ import annotations

import pytest

from commands.keys import add_one_time_keys, claim_keys, publish_device_keys
from commands.memory import MemoryEventLog, MemoryKeyStore
from events import SignedKey
from events.errors import Conflict, Invalid
from tests.e2ee_support import Device


def _flip(b64: str) -> str:
    """The same length of base64 with its first character changed."""
    return ("B" if b64[0] != "B" else "C") + b64[1:]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: {**d, "identity_key": d["identity_key"] + "="}, "identity_key: not unpadded base64"),
        (lambda d: {**d, "identity_key": "!!" + d["identity_key"][2:]}, "identity_key: not unpadded base64"),
        (lambda d: {**d, "identity_key": d["identity_key"][:-3]}, "identity_key: 30 bytes, 32 expected"),
        (lambda d: {**d, "signing_key": d["signing_key"] + "AAAA"}, "signing_key: 35 bytes, 32 expected"),
        (lambda d: {**d, "signature": d["signature"][:-4]}, "identity_key.signature: 61 bytes"),
        (lambda d: {**d, "signature": _flip(d["signature"])}, "not a valid signature"),
        (lambda d: {**d, "identity_key": Device().identity_key}, "not a valid signature"),
        (lambda d: {**d, "signing_key": Device().signing_key}, "not a valid signature"),
    ],
)
async def test_bad_device_keys_are_refused_and_nothing_is_stored(change: object, message: str) -> None:
    store, log = MemoryKeyStore(), MemoryEventLog()
    body = change(Device().device_keys())  # type: ignore[operator]
    with pytest.raises(Invalid, match=message):
        await publish_device_keys("alice", "d1", **body, store=store, log=log)
    assert log.events == [] and store.devices_ == {}


async def _published() -> tuple[Device, MemoryKeyStore, MemoryEventLog]:
    device, store, log = Device(), MemoryKeyStore(), MemoryEventLog()
    await publish_device_keys("alice", "d1", **device.device_keys(), store=store, log=log)
    log.events.clear()
    return device, store, log


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda k: {**k, "key": k["key"][:-1]}, r"keys.1.key: not unpadded base64|keys.1.key: \d+ bytes"),
        (lambda k: {**k, "signature": _flip(k["signature"])}, "keys.1.signature: not a valid signature"),
        (lambda k: {**k, "signature": Device().sign(k["key"])}, "keys.1.signature: not a valid signature"),
        (lambda k: {**k, "key_id": "a b"}, "keys.1.key_id"),
    ],
)
async def test_bad_one_time_keys_are_refused_whole(change: object, message: str) -> None:
    device, store, log = await _published()
    good, bad = device.one_time_keys(2)
    keys = [SignedKey(**good), SignedKey(**change(bad))]  # type: ignore[operator]
    with pytest.raises(Invalid, match=message):
        await add_one_time_keys("alice", "d1", keys, None, store=store, log=log)
    assert log.events == [] and await store.remaining("alice", "d1") == 0


async def test_one_time_keys_of_a_device_without_keys_reused_ids_and_too_many() -> None:
    device, store, log = await _published()
    keys = [SignedKey(**k) for k in device.one_time_keys(3)]
    with pytest.raises(Conflict):  # another device, never published
        await add_one_time_keys("alice", "d2", keys, None, store=store, log=log)
    with pytest.raises(Invalid, match="appears twice"):
        await add_one_time_keys("alice", "d1", [keys[0], keys[0]], None, store=store, log=log)
    with pytest.raises(Invalid, match="at most 100"):
        await add_one_time_keys("alice", "d1", keys * 34, None, store=store, log=log)
    assert log.events == []
    assert await add_one_time_keys("alice", "d1", keys, None, store=store, log=log) == 3
    with pytest.raises(Conflict, match="already used"):
        await add_one_time_keys("alice", "d1", keys[:1], None, store=store, log=log)
    assert len(log.events) == 1


async def test_claims_check_ids_and_their_count() -> None:
    _, store, log = await _published()
    with pytest.raises(Invalid):
        await claim_keys("bob/d", [("alice", "bad id!")], store=store, log=log)
    with pytest.raises(Invalid, match="at most 100"):
        await claim_keys("bob/d", [("alice", f"d{i}") for i in range(101)], store=store, log=log)
    assert await claim_keys("bob/d", [("nobody", "d1")], store=store, log=log) == []
    assert log.events == []
