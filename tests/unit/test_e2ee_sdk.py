"""The SDK's end-to-end encryption (``tidings_client.e2ee``) with real vodozemac, between three
in-memory devices and a fake key directory and to-device relay (no server): Olm sessions from
claimed one-time keys, Megolm room keys shared over them, rotation when a member leaves, a device
disappears, or after N messages / an age; a new member and a new device read from when they got
the key, not before; the pickled store and its passphrase; one-time keys replenished; forged
to-device messages and replays refused."""

from __future__ import annotations

import itertools
import json
import stat
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tidings_client.e2ee import (
    E2EE,
    TO_DEVICE_TYPE,
    DecryptionError,
    E2EEError,
    FileKeyStore,
    KeyStore,
    MemoryKeyStore,
    MissingRoomKey,
    WrongPassphrase,
)
from tidings_client.errors import Conflict
from tidings_client.models import Message

CID = "g:team"
FAST_KDF = 2**10  # Scrypt's cost in tests (the default, 2**15, takes ~100 ms a device)


class World:
    """The server's side, in memory: the key directory (each one-time key claimed at most once,
    then the fallback), conversation members, to-device queues, and the log of encrypted sends."""

    def __init__(self) -> None:
        self.devices: dict[tuple[str, str], dict[str, str]] = {}
        self.one_time: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
        self.fallback: dict[tuple[str, str], dict[str, str]] = {}
        self.members: dict[str, set[str]] = {}
        self.queues: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self.claimed: list[str] = []
        self.log: list[Message] = []
        self._ids = itertools.count(1)

    def append(self, sender: E2EE, fields: dict[str, str]) -> Message:
        """What the server stores of an encrypted send (what every member fetches)."""
        message = Message.from_json(
            {
                "message_id": str(next(self._ids)),
                "conversation_id": CID,
                "sender_id": sender.user_id,
                "client_msg_id": f"c{len(self.log)}",
                "ts": 0,
                "body": None,
                **fields,
            }
        )
        self.log.append(message)
        return message


class Api:
    """One device's view of the ``World`` (the ``KeyServer`` the client would be)."""

    def __init__(self, world: World, user_id: str, device_id: str) -> None:
        self.world, self.me = world, (user_id, device_id)

    async def e2ee_members(self, conversation_id: str) -> list[str]:
        return sorted(self.world.members[conversation_id])

    async def e2ee_user_devices(self, user_id: str) -> list[dict[str, Any]]:
        return [
            {"device_id": d, **keys} for (u, d), keys in sorted(self.world.devices.items()) if u == user_id
        ]

    async def e2ee_claim(self, devices: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        out = []
        for user_id, device_id in devices:
            keys = self.world.one_time[(user_id, device_id)]
            if keys:
                key, fallback = keys.pop(0), False
            elif (user_id, device_id) in self.world.fallback:
                key, fallback = self.world.fallback[(user_id, device_id)], True
            else:
                continue
            self.world.claimed.append(key["key"])
            out.append({"user_id": user_id, "device_id": device_id, **key, "fallback": fallback})
        return out

    async def e2ee_send_to_device(self, messages: Sequence[dict[str, str]]) -> None:
        assert len(messages) <= 100
        for m in messages:
            self.world.queues[(m["user_id"], m["device_id"])].append(
                {
                    "type": "to_device",
                    "sender_id": self.me[0],
                    "sender_device": self.me[1],
                    "type_of": m["type"],
                    "ciphertext": m["ciphertext"],
                }
            )

    async def e2ee_put_device_keys(self, body: dict[str, str]) -> None:
        known = self.world.devices.get(self.me)
        if known is not None and known != body:
            raise Conflict("other keys are published", status=409)
        self.world.devices[self.me] = dict(body)

    async def e2ee_delete_device_keys(self) -> None:
        self.world.devices.pop(self.me, None)
        self.world.one_time.pop(self.me, None)
        self.world.fallback.pop(self.me, None)

    async def e2ee_upload_one_time_keys(self, body: dict[str, Any]) -> int:
        self.world.one_time[self.me] += body["keys"]
        if body.get("fallback"):
            self.world.fallback[self.me] = body["fallback"]
        return len(self.world.one_time[self.me])

    async def e2ee_one_time_key_count(self) -> int:
        return len(self.world.one_time[self.me])


async def device(world: World, user: str, dev: str, store: KeyStore | None = None, **options: Any) -> E2EE:
    options.setdefault("scrypt_n", FAST_KDF)
    return await E2EE.open(
        user,
        dev,
        Api(world, user, dev),
        passphrase=f"{user}'s passphrase",
        store=store or MemoryKeyStore(),
        **options,
    )


async def deliver(world: World, *devices: E2EE) -> int:
    """Hand each device the to-device messages waiting for it; how many room keys were new."""
    new = 0
    for d in devices:
        queue = world.queues.pop((d.user_id, d.device_id), [])
        for frame in queue:
            new += await d.receive_to_device(frame)
    return new


async def send(world: World, sender: E2EE, body: str) -> Message:
    return world.append(sender, await sender.encrypt(CID, {"kind": "text", "body": body}))


async def test_one_to_one_olm_and_megolm_round_trip() -> None:
    world = World()
    alice, bob = await device(world, "alice", "phone"), await device(world, "bob", "laptop")
    assert world.devices[("alice", "phone")]["identity_key"] == alice.identity_key
    assert len(world.one_time[("bob", "laptop")]) == 50 and ("bob", "laptop") in world.fallback
    world.members[CID] = {"alice", "bob"}

    sent = await send(world, alice, "hello bob, the secret is 4711")
    assert sent.kind == "encrypted" and sent.body is None and sent.algorithm == "megolm.v1"
    assert sent.sender_device == "phone" and "4711" not in json.dumps(sent.__dict__)
    # The room key went over Olm: one pre-key message for bob's one device, with a claimed key.
    (frame,) = world.queues[("bob", "laptop")]
    assert frame["type_of"] == TO_DEVICE_TYPE and "session_key" not in frame["ciphertext"]
    assert len(world.claimed) == 1 and len(world.one_time[("bob", "laptop")]) == 49

    with pytest.raises(MissingRoomKey):
        bob.decrypt(sent)  # before the room key arrived
    assert await deliver(world, bob) == 1
    got = bob.decrypt(sent)
    assert (got.kind, got.body, got.sender_id) == ("text", "hello bob, the secret is 4711", "alice")
    assert alice.decrypt(sent).body == "hello bob, the secret is 4711"  # the sender reads its own

    reply = await send(world, bob, "hi alice")
    await deliver(world, alice)
    assert alice.decrypt(reply).body == "hi alice"
    # Bob answered over the Olm session alice opened: no key of alice's was claimed.
    assert len(world.claimed) == 1
    # A second message needs no new room key.
    again = await send(world, alice, "second")
    assert world.queues.get(("bob", "laptop"), []) == []
    assert bob.decrypt(again).body == "second" and again.session_id == sent.session_id


async def test_a_member_who_leaves_cannot_read_what_is_sent_after() -> None:
    world = World()
    alice, bob, carol = [await device(world, u, "d1") for u in ("alice", "bob", "carol")]
    world.members[CID] = {"alice", "bob", "carol"}
    before = await send(world, alice, "for all three")
    await deliver(world, bob, carol)
    assert carol.decrypt(before).body == bob.decrypt(before).body == "for all three"

    world.members[CID].discard("carol")
    after = await send(world, alice, "carol is gone")
    assert after.session_id != before.session_id  # rotated: carol's device held the old key
    assert await deliver(world, bob, carol) == 1  # bob's new key; nothing for carol
    assert bob.decrypt(after).body == "carol is gone"
    assert not carol.has_room_key(after.session_id or "")
    with pytest.raises(MissingRoomKey):
        carol.decrypt(after)  # carol has the later ciphertext, as any member would, and no key
    # Bob's own sends rotate too once he knows carol left (his session was never shared: new).
    from_bob = await send(world, bob, "bob after")
    await deliver(world, alice, carol)
    with pytest.raises(MissingRoomKey):
        carol.decrypt(from_bob)
    assert alice.decrypt(from_bob).body == "bob after"


async def test_a_new_member_and_a_new_device_read_from_when_they_got_the_key() -> None:
    world = World()
    alice, bob = await device(world, "alice", "d1"), await device(world, "bob", "d1")
    world.members[CID] = {"alice", "bob"}
    early = await send(world, alice, "before carol")
    await deliver(world, bob)

    world.members[CID].add("carol")
    carol = await device(world, "carol", "d1")
    later = await send(world, alice, "carol is here")
    assert later.session_id == early.session_id  # a join does not rotate; the key is re-shared
    await deliver(world, bob, carol)
    assert carol.decrypt(later).body == "carol is here"
    with pytest.raises(DecryptionError):
        carol.decrypt(early)  # the shared key starts at the current ratchet index

    # Bob adds a second device: a device_list change, and the next send shares the key to it.
    bob2 = await device(world, "bob", "d2")
    alice.device_list_changed("bob")
    third = await send(world, alice, "hello bob's tablet")
    await deliver(world, bob, bob2, carol)
    assert bob2.decrypt(third).body == "hello bob's tablet"
    with pytest.raises(DecryptionError):
        bob2.decrypt(later)
    # Bob's own new device gets the keys of what bob's first device sends.
    own = await send(world, bob, "from bob's phone")
    await deliver(world, alice, bob2, carol)
    assert bob2.decrypt(own).body == "from bob's phone"


async def test_a_device_that_disappears_rotates_the_session() -> None:
    world = World()
    alice, bob = await device(world, "alice", "d1"), await device(world, "bob", "d1")
    bob_old = await device(world, "bob", "old")
    world.members[CID] = {"alice", "bob"}
    first = await send(world, alice, "one")
    await deliver(world, bob, bob_old)
    assert bob_old.decrypt(first).body == "one"

    await bob_old.server.e2ee_delete_device_keys()  # the device is withdrawn (lost, signed out)
    alice.device_list_changed("bob")
    second = await send(world, alice, "two")
    assert second.session_id != first.session_id
    await deliver(world, bob, bob_old)
    assert bob.decrypt(second).body == "two"
    with pytest.raises(MissingRoomKey):
        bob_old.decrypt(second)


async def test_the_session_rotates_after_n_messages_and_after_its_age() -> None:
    now = [1000.0]
    world = World()
    alice = await device(
        world, "alice", "d1", rotate_after_messages=3, rotate_after_s=60, clock=lambda: now[0]
    )
    bob = await device(world, "bob", "d1")
    world.members[CID] = {"alice", "bob"}
    sessions = [(await send(world, alice, f"m{i}")).session_id for i in range(7)]
    assert sessions[0] == sessions[1] == sessions[2] != sessions[3]
    assert sessions[3] == sessions[4] == sessions[5] != sessions[6]
    now[0] += 61
    aged = await send(world, alice, "a minute later")
    assert aged.session_id not in sessions
    await deliver(world, bob)
    assert [bob.decrypt(m).body for m in world.log] == [f"m{i}" for i in range(7)] + ["a minute later"]


async def test_the_store_is_pickled_with_the_passphrase_and_reopens() -> None:
    world = World()
    store = MemoryKeyStore()
    alice = await device(world, "alice", "d1", store=store)
    bob = await device(world, "bob", "d1")
    world.members[CID] = {"alice", "bob"}
    sent = await send(world, alice, "kept across a restart")
    await deliver(world, bob)
    assert store.state is not None
    state = json.loads(store.state)
    assert alice.identity_key not in store.state or "account" in state  # public keys may appear
    # No secret in the clear: the session key and the plaintext are only inside the pickles.
    assert sent.session_id and "kept across" not in store.state
    with pytest.raises(WrongPassphrase):
        await E2EE.open("alice", "d1", Api(world, "alice", "d1"), passphrase="wrong", store=store)
    with pytest.raises(E2EEError):
        await E2EE.open("mallory", "d1", Api(world, "mallory", "d1"), passphrase="x", store=store)

    again = await E2EE.open(
        "alice", "d1", Api(world, "alice", "d1"), passphrase="alice's passphrase", store=store
    )
    assert again.identity_key == alice.identity_key
    assert again.decrypt(sent).body == "kept across a restart"
    more = await send(world, again, "after the restart")
    assert more.session_id == sent.session_id  # the outbound session and its count survived
    assert world.queues.get(("bob", "d1"), []) == []  # bob already has it: not shared again
    assert bob.decrypt(more).body == "after the restart"
    # A device whose store was lost makes a new account: its old keys are replaced.
    fresh = await device(world, "alice", "d1")
    assert world.devices[("alice", "d1")]["identity_key"] == fresh.identity_key != alice.identity_key


async def test_one_time_keys_are_replenished_when_claims_drain_them() -> None:
    world = World()
    bob = await device(world, "bob", "d1", one_time_keys_target=10)
    assert len(world.one_time[("bob", "d1")]) == 10
    senders = [await device(world, f"u{i}", "d1") for i in range(6)]
    world.members[CID] = {"bob", *(s.user_id for s in senders)}
    for s in senders:
        await s.encrypt(CID, {"kind": "text", "body": "hi"})
    assert len(world.one_time[("bob", "d1")]) == 4  # six claimed
    await deliver(world, bob)
    for task in list(bob._tasks):
        await task
    assert len(world.one_time[("bob", "d1")]) == 10  # topped up after the pre-key messages
    assert await bob.replenish() == 10


async def test_forged_and_replayed_input_is_refused() -> None:
    world = World()
    alice, bob, mallory = [await device(world, u, "d1") for u in ("alice", "bob", "mallory")]
    world.members[CID] = {"alice", "bob", "mallory"}
    sent = await send(world, alice, "genuine")
    await deliver(world, bob, mallory)

    # Mallory's room key sent under alice's name (the server names the real sender): dropped.
    world.members["other"] = {"mallory", "bob"}
    await mallory.encrypt("other", {"kind": "text", "body": "x"})
    (frame,) = world.queues.pop(("bob", "d1"))
    assert await bob.receive_to_device({**frame, "sender_id": "alice"}) is False
    assert await bob.receive_to_device({**frame, "ciphertext": "not json"}) is False
    assert await bob.receive_to_device({**frame, "type_of": "something.else"}) is False
    assert await bob.receive_to_device(frame) is True
    assert await bob.receive_to_device(frame) is False  # the same one again (a sync after a push)

    # A message re-labelled as mallory's, or moved to another conversation, does not decrypt.
    with pytest.raises(DecryptionError):
        bob.decrypt(Message(**{**sent.__dict__, "sender_id": "mallory"}))
    with pytest.raises(DecryptionError):
        bob.decrypt(Message(**{**sent.__dict__, "sender_device": "d2"}))
    with pytest.raises(DecryptionError):
        bob.decrypt(Message(**{**sent.__dict__, "conversation_id": "other"}))
    assert bob.decrypt(sent).body == "genuine"
    with pytest.raises(DecryptionError, match="replay"):
        bob.decrypt(Message(**{**sent.__dict__, "message_id": "999"}))
    with pytest.raises(DecryptionError):
        bob.decrypt(Message(**{**sent.__dict__, "message_id": "998", "ciphertext": "AAAA"}))
    with pytest.raises(DecryptionError):
        bob.decrypt(Message(**{**sent.__dict__, "algorithm": "rot13"}))
    # Devices whose keys are not self-signed are never shared with.
    world.devices[("bob", "evil")] = {**world.devices[("mallory", "d1")], "signing_key": bob.signing_key}
    alice.device_list_changed("bob")
    await send(world, alice, "again")
    assert ("bob", "evil") not in world.queues


async def test_a_file_key_store_is_private_to_its_owner_and_reopens(tmp_path: Path) -> None:
    world = World()
    world.members[CID] = {"alice", "bob"}
    path = tmp_path / "keys" / "alice.json"
    alice = await device(world, "alice", "d1", store=FileKeyStore(path))
    bob = await device(world, "bob", "d1")
    sent = await send(world, alice, "on disk")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "on disk" not in path.read_text()
    reopened = await E2EE.open(
        "alice", "d1", Api(world, "alice", "d1"), passphrase="alice's passphrase", store=FileKeyStore(path)
    )
    assert reopened.decrypt(sent).body == "on disk"
    await deliver(world, bob)
    assert bob.decrypt(sent).body == "on disk"
