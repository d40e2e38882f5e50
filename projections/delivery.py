"""What each event pushes to connected clients, and on which pub/sub channel (the frames and
the payloads' envelope are ``projections.wire``'s).

Hybrid fan-out: a message of a direct chat or of a group below the threshold is published on
each member's own channel; a message of a larger group is published once, on one of a fixed set
of group shard channels that every gateway listens to, and each gateway forwards it to its own
sockets of that group's members. Membership frames go to the users they concern.

Routed to gateways, not users (single-instance Redis): the deliver stage publishes a push for
the members of a small conversation once per gateway that holds sockets of any of them, on the
gateway's channel, as ``routed(recipients, payload)``; the gateway hands the payload to each
recipient's local sockets as if it had come on their channel (``projections.adapters.recent``
reads the route sets and publishes in one script, so a route added before the script runs is
used). A member with no live route is published to on their own channel, as before. On a Redis
Cluster every push still goes to the member's channel.

Pushes are the fast path only: pub/sub drops messages during outages, and clients that
reconnect read what they missed from the read models, which are the truth.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import singledispatch

from events import (
    ChatEvent,
    EncryptionEnabled,
    GroupCreated,
    GroupRenamed,
    MemberRemoved,
    MemberRoleChanged,
    MembersAdded,
    MessageSent,
    OwnershipTransferred,
    PresenceChanged,
    ReceiptRecorded,
    dm_members,
    keys,
)
from projections.roster import Roster
from projections.wire import (
    JOINED,
    LEFT,
    MESSAGE,
    PRESENCE,
    TO_DEVICE,
    conversation_frame,
    group_object,
    message_frame,
    message_json,
    presence_frame,
    receipt_frame,
    tagged,
    typing_frame,
    typing_payload,
)

GROUP_SHARDS = 16


@dataclass(frozen=True)
class Push:
    channel: str
    payload: bytes


def routed(recipients: list[str], payload: bytes) -> bytes:
    """``<user>,<user>...\0<payload>``: a user-channel payload for those users' sockets on one
    gateway (user ids never hold ``,`` or NUL: ``events.naming``). The deliver stage's script
    builds the same bytes."""
    return ",".join(recipients).encode() + b"\0" + payload


def unrouted(data: bytes) -> tuple[list[str], bytes]:
    """``(recipients, payload)`` of a ``routed`` payload."""
    head, _, payload = data.partition(b"\0")
    return head.decode().split(","), payload


def group_shard(conversation_id: str) -> int:
    return zlib.crc32(conversation_id.encode()) % GROUP_SHARDS


def _to_members(cid: str, recipients: list[str] | None, frame: bytes) -> list[Push]:
    if recipients is None:
        return [Push(keys.group_shard_channel(group_shard(cid)), tagged(MESSAGE, cid, frame))]
    return [Push(keys.user_channel(uid), MESSAGE + frame) for uid in recipients]


def typing_pushes(cid: str, typist: str, state: str) -> list[Push]:
    """A typing indicator: never stored, sent straight from the gateway to the members whose
    sockets view the conversation (direct chats: the other member; groups: via the shard)."""
    payload = typing_payload(cid, typist, typing_frame(cid, typist, state))
    members = dm_members(cid)
    if members is None:
        return [Push(keys.group_shard_channel(group_shard(cid)), payload)]
    return [Push(keys.user_channel(uid), payload) for uid in dict.fromkeys(members) if uid != typist]


def to_device_push(user_id: str, device_id: str, frame: bytes) -> Push:
    """A ``to_device`` frame for one device of ``user_id`` (end-to-end encryption)."""
    return Push(keys.user_channel(user_id), tagged(TO_DEVICE, device_id, frame))


def presence_push(event: PresenceChanged) -> Push:
    frame = presence_frame(event.user_id, event.state, event.last_seen)
    return Push(keys.presence_channel(event.user_id), tagged(PRESENCE, str(event.at), frame))


@singledispatch
async def pushes(event: ChatEvent, roster: Roster) -> list[Push]:
    """The pushes ``event`` causes. Call in log order: it moves ``roster`` past the event."""
    await roster.observe(event)
    return []


@pushes.register
async def _(event: MessageSent, roster: Roster) -> list[Push]:
    recipients = await roster.recipients(event.conversation_id)
    return _to_members(event.conversation_id, recipients, message_frame(message_json(event)))


@pushes.register
async def _(event: ReceiptRecorded, roster: Roster) -> list[Push]:
    recipients = await roster.recipients(event.conversation_id)
    if recipients is None:
        return []  # large groups: receipts by query only
    frame = receipt_frame(event.conversation_id, event.user_id, event.message_id, event.status)
    return [Push(keys.user_channel(uid), MESSAGE + frame) for uid in recipients]


@pushes.register
async def _(event: GroupCreated, roster: Roster) -> list[Push]:
    await roster.observe(event)
    frame = conversation_frame(
        "added",
        group_object(event.conversation_id, event.title, event.member_count, event.ts, event.encrypted),
    )
    joined = tagged(JOINED, event.conversation_id, frame)
    return [Push(keys.user_channel(m.user_id), joined) for m in event.members]


@pushes.register
async def _(event: MembersAdded, roster: Roster) -> list[Push]:
    before = await roster.recipients(event.conversation_id)
    await roster.observe(event)
    entry = await roster.group(event.conversation_id)
    obj = group_object(event.conversation_id, entry.title, event.member_count, event.ts, entry.encrypted)
    joined = tagged(JOINED, event.conversation_id, conversation_frame("added", obj))
    # The others first: on a shard channel, gateways would otherwise count the newcomers in.
    updated = _to_members(event.conversation_id, before, conversation_frame("updated", obj))
    return updated + [Push(keys.user_channel(m.user_id), joined) for m in event.members]


@pushes.register
async def _(event: MemberRemoved, roster: Roster) -> list[Push]:
    await roster.observe(event)
    entry = await roster.group(event.conversation_id)
    obj = group_object(event.conversation_id, entry.title, event.member_count, event.ts, entry.encrypted)
    left = tagged(LEFT, event.conversation_id, conversation_frame("removed", obj))
    remaining = await roster.recipients(event.conversation_id)
    return [
        Push(keys.user_channel(event.user_id), left),
        *_to_members(event.conversation_id, remaining, conversation_frame("updated", obj)),
    ]


async def _updated(
    event: MemberRoleChanged | OwnershipTransferred | GroupRenamed, roster: Roster
) -> list[Push]:
    await roster.observe(event)
    entry = await roster.group(event.conversation_id)
    obj = group_object(event.conversation_id, entry.title, entry.member_count, event.ts, entry.encrypted)
    recipients = await roster.recipients(event.conversation_id)
    return _to_members(event.conversation_id, recipients, conversation_frame("updated", obj))


@pushes.register
async def _(event: EncryptionEnabled, roster: Roster) -> list[Push]:
    """A direct chat became end-to-end encrypted: both sides' devices hear it at once."""
    await roster.observe(event)
    members = dm_members(event.conversation_id) or ()
    obj = {
        "conversation_id": event.conversation_id,
        "kind": "direct",
        "title": None,
        "member_count": len(set(members)),
        "last_message": None,
        "unread_count": 0,
        "last_activity_ts": event.ts,
        "encrypted": True,
    }
    frame = MESSAGE + conversation_frame("updated", obj)
    return [Push(keys.user_channel(uid), frame) for uid in dict.fromkeys(members)]


pushes.register(MemberRoleChanged, _updated)
pushes.register(OwnershipTransferred, _updated)
pushes.register(GroupRenamed, _updated)
