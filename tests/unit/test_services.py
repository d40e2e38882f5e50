"""The gateway's services on the in-memory fakes: the routes reach the write side only through
them (``tests/unit/test_architecture.py``), so the checks they used to make before a command
(membership before a mute, the token's own device) are the services' now."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from commands.memory import MemoryDirectory, MemoryEventLog, MemoryKeyStore, MemoryLocks
from commands.push import AllowedHosts
from events import ChatEvent, ConversationMuted, PushRegistered, PushUnregistered
from events.errors import Forbidden, Invalid, NotFound
from events.ids import Snowflake
from query_api.services import Conversations, Keys, PushSettings
from tests.e2ee_support import Device


class Writes:
    def __init__(self) -> None:
        self.events: list[ChatEvent] = []

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        self.events += events


def _push() -> tuple[PushSettings, MemoryEventLog, Writes]:
    log, writes = MemoryEventLog(), Writes()
    hosts = AllowedHosts(webhook=["127.0.0.1"], webpush=[])
    return PushSettings(log, writes, hosts, MemoryDirectory(), clock=lambda: 1000), log, writes


async def test_a_mute_needs_membership_and_is_appended_then_written_through() -> None:
    push, log, writes = _push()
    with pytest.raises(Forbidden):
        await push.set_muted("carol", "dm:alice:bob", True)
    with pytest.raises(NotFound):
        await push.set_muted("alice", "g:nosuchgroup", True)
    assert log.events == [] and writes.events == []
    await push.set_muted("alice", "dm:alice:bob", True)
    assert log.events == writes.events
    (muted,) = log.events
    assert isinstance(muted, ConversationMuted) and (muted.user_id, muted.muted) == ("alice", True)


async def test_a_device_registers_and_unregisters_only_itself() -> None:
    push, log, _ = _push()
    with pytest.raises(Forbidden):
        await push.register("alice", "laptop", "phone", "webhook", endpoint="http://127.0.0.1:9/h")
    with pytest.raises(Invalid):  # not an allowed host
        await push.register("alice", "phone", "phone", "webhook", endpoint="http://example.com/h")
    assert await push.register("alice", "phone", "phone", "webhook", endpoint="http://127.0.0.1:9/h") == (
        "phone",
        "webhook",
    )
    with pytest.raises(Forbidden):
        await push.unregister("alice", "laptop", "phone")
    await push.unregister("alice", "phone", "phone")
    assert [type(e) for e in log.events] == [PushRegistered, PushUnregistered]


async def test_membership_checks_of_the_conversations_service() -> None:
    conversations = Conversations(MemoryEventLog(), MemoryDirectory(), MemoryLocks(), Snowflake(2), 10)
    group = await conversations.create("owner", "Team", ["bob"], encrypted=False)
    await conversations.directory.apply([group])
    cid = group.conversation_id
    assert await conversations.role(cid, "owner") == "owner"
    info, role = await conversations.of_member(cid, "bob")
    assert (info.kind, info.title, info.member_count, role) == ("group", "Team", 2, "member")
    with pytest.raises(Forbidden):
        await conversations.role(cid, "carol")
    with pytest.raises(NotFound):
        await conversations.role(f"{cid}x", "owner")
    with pytest.raises(Invalid):  # a direct chat has no members to change
        await conversations.add_members("alice", "dm:alice:bob", ["carol"])


async def test_keys_are_checked_before_they_are_kept() -> None:
    log, store = MemoryEventLog(), MemoryKeyStore()
    keys, device = Keys(log, store), Device()
    published = device.device_keys()
    identity, signing, signature = published["identity_key"], published["signing_key"], published["signature"]
    forged = Device().device_keys()["signature"]  # a signature that is not the key's
    with pytest.raises(Invalid):
        await keys.publish("alice", "d1", identity, signing, forged)
    assert await keys.devices("alice") == []
    await keys.publish("alice", "d1", identity, signing, signature)
    (listed,) = await keys.devices("alice")
    assert listed.identity_key == identity and len(log.events) == 1
