"""The JSON the HTTP API answers, as pydantic models: the source of ``/v1/openapi.json``.

Handlers build their answers as plain dicts (serialized once with orjson, on the hot path); these
models say what those dicts are. ``tests/e2e/test_openapi.py`` validates real answers of the
running system against the document made from them, so a handler and its model cannot drift
apart unnoticed. ``extra="forbid"``: a field a handler adds must be added here too.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from events import MessageKind, Role
from events.catalogue import MediaRef

MESSAGE_ID = r"^[0-9]{1,19}$"


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorDetail(Answer):
    code: Literal[
        "invalid",
        "unauthorized",
        "forbidden",
        "not_found",
        "conflict",
        "too_large",
        "rate_limited",
        "unavailable",
        "internal",
    ]
    message: str


class ErrorAnswer(Answer):
    """Every HTTP error: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


class Message(Answer):
    """A message. ``message_id`` is a Snowflake as a decimal string (ordered as an integer)."""

    message_id: str = Field(pattern=MESSAGE_ID)
    conversation_id: str
    sender_id: str
    client_msg_id: str
    kind: MessageKind
    body: str | None = Field(description="null for kind `encrypted`")
    media: MediaRef | None
    # kind `encrypted` only (end-to-end encryption): the sender's ciphertext, unchanged
    ciphertext: str | None = None
    algorithm: str | None = None
    session_id: str | None = None
    sender_device: str | None = None
    ts: int


class LastMessage(Answer):
    message_id: str = Field(pattern=MESSAGE_ID)
    sender_id: str
    preview: str | None = Field(description="the first 100 characters of a text body; null when encrypted")
    ts: int


class Conversation(Answer):
    """A conversation as one user sees it (in the inbox)."""

    conversation_id: str
    kind: Literal["direct", "group"]
    title: str | None
    member_count: int
    last_message: LastMessage | None
    unread_count: int = Field(description="counted up to 100")
    last_activity_ts: int | None
    encrypted: bool = Field(description="end-to-end encrypted (never turned off)")


class ConversationAnswer(Answer):
    conversation: Conversation


class Inbox(Answer):
    conversations: list[Conversation]
    next: str | None = Field(description="pass as `before` for the next page; null at the end")


class MemberRole(Answer):
    user_id: str
    role: Role


class MembersPage(Answer):
    members: list[MemberRole]
    next: str | None = Field(description="pass as `after` for the next page; null at the end")


class AddedMembers(Answer):
    members: list[MemberRole] = Field(description="those added (not those already members)")


class MemberAnswer(Answer):
    member: MemberRole


class SendAccepted(Answer):
    message_id: str = Field(pattern=MESSAGE_ID)
    conversation_id: str
    ts: int


class HistoryPage(Answer):
    messages: list[Message] = Field(description="ascending by message_id")
    has_more: bool


class Watermarks(Answer):
    user_id: str
    delivered: str | None = Field(pattern=MESSAGE_ID)
    read: str | None = Field(pattern=MESSAGE_ID)


class ReceiptsPage(Answer):
    receipts: list[Watermarks]
    next: str | None


class Presence(Answer):
    user_id: str
    state: Literal["online", "away", "offline"]
    last_seen: int | None


class Receipt(Answer):
    conversation_id: str
    user_id: str
    message_id: str = Field(pattern=MESSAGE_ID)
    status: Literal["delivered", "read"]


class ConversationChange(Answer):
    event: Literal["added", "removed", "updated"]
    conversation: Conversation


class ToDeviceFrame(Answer):
    """A to-device message (end-to-end encryption): ciphertext the server cannot read."""

    type: Literal["to_device"]
    sender_id: str
    sender_device: str
    type_of: str
    ciphertext: str


class SyncPage(Answer):
    messages: list[Message]
    receipts: list[Receipt]
    conversations: list[ConversationChange]
    cursor: str
    has_more: bool
    # The device's waiting to-device messages (v1.1), up to 100 a page (``has_more`` then).
    to_device: list[ToDeviceFrame] = Field(default_factory=list)
    # Users sharing a conversation with the caller whose device keys changed since the cursor.
    device_lists: list[str] = Field(default_factory=list)


class Health(Answer):
    status: Literal["ok"]


class Readiness(Answer):
    ready: bool
    checks: dict[str, str]


class MediaObject(Answer):
    """A stored media object (protocol v1.1, Media); ``width``/``height`` for images only."""

    media_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    content_type: str
    size: int
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    width: int | None = None
    height: int | None = None
    thumbnail: bool


class UploadStarted(Answer):
    """Where to PUT the bytes of a large upload, and until when (ms since the epoch)."""

    media_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    upload_url: str
    expires_ts: int


class PushRegistration(Answer):
    """A device's push registration, as stored (protocol v1.1, Push notifications)."""

    device_id: str
    provider: Literal["webpush", "fcm", "apns", "webhook"]


class ConversationSettings(Answer):
    conversation_id: str
    muted: bool


class WebPushKey(Answer):
    """The VAPID public key for ``pushManager.subscribe`` (unpadded base64url, uncompressed P-256)."""

    public_key: str


class DevToken(Answer):
    """A development token (only when ``TIDINGS_DEV_LOGIN`` is on)."""

    token: str
    user_id: str
    device_id: str
    expires_ts: int


class SearchResult(Answer):
    message: Message
    # Fragments of the body with each match in <em>; the body's own text is HTML-escaped.
    highlights: list[str]


class SearchPage(Answer):
    results: list[SearchResult]
    next: str | None


class KeysPublished(Answer):
    """``{}``: the device's keys are published (or were already, the same)."""


class KeyCount(Answer):
    """How many one-time keys of the device are unclaimed (protocol v1.1, End-to-end encryption)."""

    remaining: int


class DeviceKeyAnswer(Answer):
    device_id: str
    identity_key: str
    signing_key: str
    signature: str


class UserKeys(Answer):
    user_id: str
    devices: list[DeviceKeyAnswer]


class ClaimedKey(Answer):
    user_id: str
    device_id: str
    key_id: str
    key: str
    signature: str
    fallback: bool


class ClaimedKeys(Answer):
    """One key per asked device that has one; a device with none is left out."""

    keys: list[ClaimedKey]


class Relayed(Answer):
    """How many to-device messages were queued and relayed."""

    relayed: int
