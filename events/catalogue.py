"""Event models, v1, and their wire codec.

Rules: frozen, ``extra="forbid"``, a ``type`` literal and a ``v`` version. A change that old
readers cannot ignore gets a new ``v`` and an upcaster beside the class, registered in
``_UPCASTERS``, so the log (and the archive) can be read forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    model_serializer,
)

MessageKind = Literal["text", "image", "video", "file", "encrypted"]
Role = Literal["owner", "admin", "member"]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MediaRef(BaseModel):
    """The media a message carries, as the media read model knew it when the message was sent
    (``sha256``, ``width`` and ``height`` are absent from events written before media existed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    media_id: str
    content_type: str
    size: int
    sha256: str | None = None
    width: int | None = None
    height: int | None = None


_ENVELOPE = ("ciphertext", "algorithm", "session_id")


class MessageSent(_Event):
    """A message was accepted into a conversation. ``message_id`` is a Snowflake (int)."""

    type: Literal["message.sent"] = "message.sent"
    v: Literal[1] = 1
    conversation_id: str
    message_id: int
    sender_id: str
    sender_device: str
    client_msg_id: str
    kind: MessageKind
    body: str
    media: MediaRef | None = None
    ts: int
    # Kind ``encrypted`` only (end-to-end encryption; ``body`` is then empty): the client's
    # ciphertext (unpadded base64, stored and fanned out unchanged), its algorithm (e.g.
    # ``megolm.v1``) and session. Optional, so every event written before them still reads.
    ciphertext: str | None = None
    algorithm: str | None = None
    session_id: str | None = None

    @model_serializer(mode="wrap")
    def _plain_stays_as_it_was(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A message of any other kind is written exactly as before encryption existed (the
        # archive's fast path and older readers expect its keys).
        data: dict[str, Any] = handler(self)
        if self.kind != "encrypted":
            for name in _ENVELOPE:
                data.pop(name, None)
        return data


class Member(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: str
    role: Role


class _ConversationEvent(_Event):
    """A change to a conversation other than a message or a receipt. ``event_id`` is a
    Snowflake; ``actor_id`` made the change."""

    conversation_id: str
    event_id: int
    actor_id: str
    ts: int


class DirectOpened(_ConversationEvent):
    """``actor_id`` opened the direct conversation with ``user_id`` (``POST /v1/conversations``
    of kind ``direct``) before either had sent a message in it. From then on the two share a
    conversation: each may see the other's presence, and the opener's inbox lists it."""

    type: Literal["direct.opened"] = "direct.opened"
    v: Literal[1] = 1
    user_id: str


class _GroupEvent(_ConversationEvent):
    """A change to a group. ``member_count`` is the count after it, decided by the write side,
    so projections never count (replays and redeliveries then agree)."""


class GroupCreated(_GroupEvent):
    type: Literal["group.created"] = "group.created"
    v: Literal[1] = 1
    title: str
    members: tuple[Member, ...]  # the owner included
    member_count: int
    # End-to-end encrypted from its creation on, for good (absent in events written before,
    # and left out of a plaintext group's event, which is written as before).
    encrypted: bool = False

    @model_serializer(mode="wrap")
    def _plain_stays_as_it_was(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not self.encrypted:
            data.pop("encrypted", None)
        return data


class EncryptionEnabled(_ConversationEvent):
    """``actor_id`` asked for end-to-end encryption of the direct conversation (``POST
    /v1/conversations`` with ``encrypted: true``). From this event on in the conversation's log,
    every message is ``encrypted``; nothing turns it off. The first such event decides; a later
    one (the other side asking too) changes nothing."""

    type: Literal["conversation.encryption_enabled"] = "conversation.encryption_enabled"
    v: Literal[1] = 1


class MembersAdded(_GroupEvent):
    type: Literal["group.members_added"] = "group.members_added"
    v: Literal[1] = 1
    members: tuple[Member, ...]  # only users who were not members
    member_count: int


class MemberRemoved(_GroupEvent):
    """A member left (``actor_id == user_id``) or was removed by an owner or admin."""

    type: Literal["group.member_removed"] = "group.member_removed"
    v: Literal[1] = 1
    user_id: str
    member_count: int


class MemberRoleChanged(_GroupEvent):
    """A member became admin or member (ownership moves with ``OwnershipTransferred``)."""

    type: Literal["group.member_role_changed"] = "group.member_role_changed"
    v: Literal[1] = 1
    user_id: str
    role: Role


class OwnershipTransferred(_GroupEvent):
    """``user_id`` became the owner; the previous owner (``actor_id``) became an admin. One
    event, so a group never has two owners or none."""

    type: Literal["group.ownership_transferred"] = "group.ownership_transferred"
    v: Literal[1] = 1
    user_id: str


class GroupRenamed(_GroupEvent):
    type: Literal["group.renamed"] = "group.renamed"
    v: Literal[1] = 1
    title: str


class ReceiptRecorded(_Event):
    """A member's delivered or read watermark reached ``message_id`` (``read`` implies
    ``delivered``). Watermarks only move forward; projections keep the highest."""

    type: Literal["receipt.recorded"] = "receipt.recorded"
    v: Literal[1] = 1
    conversation_id: str
    user_id: str
    device_id: str
    message_id: int
    status: Literal["delivered", "read"]
    ts: int


PresenceState = Literal["online", "away", "offline"]


class PresenceChanged(_Event):
    """A user's presence changed (only transitions are events, never heartbeats).

    ``at`` is the transition's time in microseconds from the presence store's clock; it orders
    one user's transitions even if two gateways append them out of order. ``last_seen`` (ms) is
    set when the user went ``offline``."""

    type: Literal["presence.changed"] = "presence.changed"
    v: Literal[1] = 1
    user_id: str
    state: PresenceState
    last_seen: int | None = None
    at: int


class MediaStored(_Event):
    """An upload's bytes are in the object store under ``object_key`` (random, unrelated to
    ``media_id``), their size and sha256 checked. Keyed by ``media_id`` on the media topic."""

    type: Literal["media.stored"] = "media.stored"
    v: Literal[1] = 1
    media_id: str
    uploader_id: str
    object_key: str
    content_type: str
    size: int
    sha256: str
    width: int | None = None
    height: int | None = None
    ts: int


class ThumbnailMade(_Event):
    """The media worker looked at a stored image (or video): ``thumbnail_key`` is its WebP
    thumbnail, or None when none could be made (not decodable, too many pixels, a video without a
    readable frame); ``shared_key`` is the object other members download: the original, or a copy
    with the location metadata (EXIF GPS) removed."""

    type: Literal["media.thumbnail_made"] = "media.thumbnail_made"
    v: Literal[1] = 1
    media_id: str
    thumbnail_key: str | None
    shared_key: str | None  # None: the location could not be removed, so only the uploader reads it
    location_removed: bool = False
    ts: int


class MediaDeleted(_Event):
    """The orphan job removed media that was uploaded and never sent, objects included."""

    type: Literal["media.deleted"] = "media.deleted"
    v: Literal[1] = 1
    media_id: str
    reason: str
    ts: int


class SignedKey(BaseModel):
    """A device's Curve25519 one-time (or fallback) key, unpadded base64, with the device's
    Ed25519 signature over the UTF-8 bytes of ``key`` (checked by the gateway before the event)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str
    key: str
    signature: str


class _KeyEvent(_Event):
    """A change to the key directory of one device (end-to-end encryption). Keyed by
    ``user_id`` on the key topic, so one user's key changes keep their order."""

    user_id: str
    device_id: str
    ts: int


class DeviceKeysPublished(_KeyEvent):
    """The device published its identity (Curve25519) and signing (Ed25519) keys; the signature,
    by ``signing_key`` over ``identity_key``, was checked."""

    type: Literal["keys.device_published"] = "keys.device_published"
    v: Literal[1] = 1
    identity_key: str
    signing_key: str
    signature: str


class DeviceKeysDeleted(_KeyEvent):
    """The device's keys are gone: its identity and signing keys, one-time and fallback keys."""

    type: Literal["keys.device_deleted"] = "keys.device_deleted"
    v: Literal[1] = 1


class OneTimeKeysAdded(_KeyEvent):
    """The device uploaded one-time keys (each signed, ids new to the device) and maybe a new
    fallback key, which replaces the previous one."""

    type: Literal["keys.one_time_added"] = "keys.one_time_added"
    v: Literal[1] = 1
    keys: tuple[SignedKey, ...]
    fallback: SignedKey | None = None


class OneTimeKeyClaimed(_KeyEvent):
    """``key_id`` of the device was handed out to ``claimed_by`` (``user_id/device_id`` of the
    claimer). Appended after the conditional write that decided it, so no key is claimed twice."""

    type: Literal["keys.one_time_claimed"] = "keys.one_time_claimed"
    v: Literal[1] = 1
    key_id: str
    key: str
    claimed_by: str
    # The conditional write's own id (a UUID), kept in ``one_time_claims``; None in claims
    # logged before it was recorded.
    claim_id: str | None = None


KeyEvent = DeviceKeysPublished | DeviceKeysDeleted | OneTimeKeysAdded | OneTimeKeyClaimed

MediaEvent = MediaStored | ThumbnailMade | MediaDeleted


PushProvider = Literal["webpush", "fcm", "apns", "webhook"]


class _UserEvent(_Event):
    """A change to one user's own settings; on the user-events topic, keyed by ``user_id``.
    ``ts`` (ms) orders one user's changes: read models write with it as the write time."""

    user_id: str
    ts: int


class PushRegistered(_UserEvent):
    """Where ``device_id``'s offline notifications go from now on (replaces an older one).
    ``endpoint`` for webpush and webhook, ``token`` for fcm and apns, ``p256dh`` and ``auth``
    (unpadded base64url) for webpush."""

    type: Literal["push.registered"] = "push.registered"
    v: Literal[1] = 1
    device_id: str
    provider: PushProvider
    endpoint: str | None = None
    token: str | None = None
    p256dh: str | None = None
    auth: str | None = None


class PushUnregistered(_UserEvent):
    """No more notifications to ``device_id``: the user asked (``deleted``), or the receiver
    answered 404/410 (``gone``)."""

    type: Literal["push.unregistered"] = "push.unregistered"
    v: Literal[1] = 1
    device_id: str
    reason: Literal["deleted", "gone"]
    # For ``gone``: the ``ts`` of the registration the receiver refused. Only that one (and
    # older) ends: a registration made meanwhile stays.
    registered_ts: int | None = None


class ConversationMuted(_UserEvent):
    """The user muted (or unmuted) a conversation's notifications."""

    type: Literal["conversation.muted"] = "conversation.muted"
    v: Literal[1] = 1
    conversation_id: str
    muted: bool


UserEvent = PushRegistered | PushUnregistered | ConversationMuted
# For isinstance: events of the user-events topic, never of a conversation's log.
USER_EVENTS = (PushRegistered, PushUnregistered, ConversationMuted)


GroupEvent = (
    GroupCreated | MembersAdded | MemberRemoved | MemberRoleChanged | OwnershipTransferred | GroupRenamed
)

# The union of every event, told apart by ``type``.
ChatEvent = Annotated[
    MessageSent
    | ReceiptRecorded
    | GroupEvent
    | DirectOpened
    | EncryptionEnabled
    | PresenceChanged
    | MediaEvent
    | UserEvent
    | KeyEvent,
    Field(discriminator="type"),
]

_adapter: TypeAdapter[ChatEvent] = TypeAdapter(ChatEvent)

# (type, v) -> function turning an older payload dict into the next version's dict.
_UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


def encode_event(event: ChatEvent) -> bytes:
    """The event's bytes as written to Kafka (compact JSON)."""
    return event.model_dump_json().encode()


def decode_event(raw: bytes | str) -> ChatEvent:
    """Parse bytes from the log into the current model, upcasting older versions.

    Raises ``ValueError`` (pydantic's ``ValidationError`` or orjson's decode error) for bytes
    that are not a known event: callers treat that as a poison event.
    """
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("an event must be a JSON object")
    while (upcast := _UPCASTERS.get((data.get("type"), data.get("v")))) is not None:  # type: ignore[arg-type]
        data = upcast(data)
    return _adapter.validate_python(data)
