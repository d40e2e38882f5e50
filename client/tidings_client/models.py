"""Typed objects of the protocol, read from its JSON. Unknown extra fields are ignored (the
server may add fields); ids stay decimal strings as on the wire, ``MessageId`` helpers compare
them as integers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")

PresenceState = Literal["online", "away", "offline"]
ReceiptStatus = Literal["delivered", "read"]


def id_key(message_id: str) -> int:
    """The sort key of a ``message_id``: messages of a conversation are ordered by it."""
    return int(message_id)


@dataclass(frozen=True)
class Media:
    """A stored media object: what an upload returns, and what a message of kind ``image``,
    ``video`` or ``file`` carries. ``width``/``height`` for images; ``thumbnail`` says whether a
    thumbnail exists yet (as of the answer it came in: ``MediaApi.thumbnail`` can wait for one).
    Fields the server did not send are ``None`` (v1 message frames carry only the first three)."""

    media_id: str
    content_type: str
    size: int
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    thumbnail: bool = False

    @property
    def message_kind(self) -> str:
        """The message kind this media is sent as: ``image``, ``video`` or ``file``."""
        if self.content_type.startswith("image/"):
            return "image"
        if self.content_type.startswith("video/"):
            return "video"
        return "file"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Media:
        width, height, digest = data.get("width"), data.get("height"), data.get("sha256")
        return cls(
            media_id=str(data["media_id"]),
            content_type=str(data["content_type"]),
            size=int(data["size"]),
            sha256=None if digest is None else str(digest),
            width=None if width is None else int(width),
            height=None if height is None else int(height),
            thumbnail=bool(data.get("thumbnail", False)),
        )


@dataclass(frozen=True)
class Message:
    """A message of a conversation; ``message_id`` is a decimal string (order by ``order_key``).

    A message of an encrypted conversation carries ``ciphertext``, ``algorithm``, ``session_id``
    and ``sender_device`` as the server has them, and ``encrypted`` is true; with end-to-end
    encryption enabled the client decrypts it: ``kind`` and ``body`` are then the plaintext's,
    or ``body`` is ``None`` and ``decryption_error`` says why (no room key for this device)."""

    message_id: str
    conversation_id: str
    sender_id: str
    client_msg_id: str
    kind: str
    body: str | None
    ts: int
    media: Media | None = None
    encrypted: bool = False
    ciphertext: str | None = None
    algorithm: str | None = None
    session_id: str | None = None
    sender_device: str | None = None
    decryption_error: str | None = None

    @property
    def order_key(self) -> int:
        """``int(message_id)``: the order of messages within their conversation."""
        return id_key(self.message_id)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        media = data.get("media")
        return cls(
            message_id=str(data["message_id"]),
            conversation_id=str(data["conversation_id"]),
            sender_id=str(data["sender_id"]),
            client_msg_id=str(data.get("client_msg_id") or ""),
            kind=str(data.get("kind") or "text"),
            body=data.get("body"),
            ts=int(data.get("ts") or 0),
            media=Media.from_json(media) if isinstance(media, dict) else None,
            encrypted=data.get("kind") == "encrypted",
            ciphertext=data.get("ciphertext"),
            algorithm=data.get("algorithm"),
            session_id=data.get("session_id"),
            sender_device=data.get("sender_device"),
        )


@dataclass(frozen=True)
class LastMessage:
    """The newest message of a conversation, as the inbox shows it."""

    message_id: str
    sender_id: str
    preview: str | None
    ts: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LastMessage:
        return cls(
            message_id=str(data["message_id"]),
            sender_id=str(data["sender_id"]),
            preview=data.get("preview"),
            ts=int(data.get("ts") or 0),
        )


@dataclass(frozen=True)
class Conversation:
    """A conversation as seen by the caller (the inbox object)."""

    conversation_id: str
    kind: str
    title: str | None
    member_count: int
    last_message: LastMessage | None
    unread_count: int
    last_activity_ts: int | None
    encrypted: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Conversation:
        last = data.get("last_message")
        return cls(
            conversation_id=str(data["conversation_id"]),
            kind=str(data.get("kind") or ""),
            title=data.get("title"),
            member_count=int(data.get("member_count") or 0),
            last_message=LastMessage.from_json(last) if isinstance(last, dict) else None,
            unread_count=int(data.get("unread_count") or 0),
            last_activity_ts=data.get("last_activity_ts"),
            encrypted=bool(data.get("encrypted", False)),
        )


@dataclass(frozen=True)
class Member:
    """A member of a conversation and their role (``owner``, ``admin`` or ``member``)."""

    user_id: str
    role: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Member:
        return cls(user_id=str(data["user_id"]), role=str(data.get("role") or "member"))


@dataclass(frozen=True)
class Watermarks:
    """One member's receipt watermarks in a conversation (``None`` where none yet)."""

    user_id: str
    delivered: str | None
    read: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Watermarks:
        d, r = data.get("delivered"), data.get("read")
        return cls(
            user_id=str(data["user_id"]),
            delivered=None if d is None else str(d),
            read=None if r is None else str(r),
        )


@dataclass(frozen=True)
class PushRegistration:
    """Where this device's push notifications go (``provider``: ``webpush``, ``fcm``, ``apns``
    or ``webhook``)."""

    device_id: str
    provider: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PushRegistration:
        return cls(device_id=str(data["device_id"]), provider=str(data["provider"]))


@dataclass(frozen=True)
class ConversationSettings:
    """The caller's own settings of a conversation (``muted``: no push notifications from it)."""

    conversation_id: str
    muted: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConversationSettings:
        return cls(conversation_id=str(data["conversation_id"]), muted=bool(data["muted"]))


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list; pass ``next`` back to get the following page (``None``: the last)."""

    items: list[T]
    next: str | None


@dataclass(frozen=True)
class HistoryPage:
    """A page of history, ascending by ``message_id``; ``has_more`` in the direction of paging."""

    messages: list[Message]
    has_more: bool


# ---- events (what ``TidingsClient.events()`` yields and callbacks receive) -------------------


@dataclass(frozen=True)
class MessageEvent:
    """A new message in one of the user's conversations (pushed, or found by a resume sync)."""

    message: Message


@dataclass(frozen=True)
class Receipt:
    """A member's watermark moved (``read`` implies ``delivered``)."""

    conversation_id: str
    user_id: str
    message_id: str
    status: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Receipt:
        return cls(
            conversation_id=str(data["conversation_id"]),
            user_id=str(data["user_id"]),
            message_id=str(data["message_id"]),
            status=str(data["status"]),
        )


@dataclass(frozen=True)
class Typing:
    """Someone started or stopped typing in a conversation this client ``view``s."""

    conversation_id: str
    user_id: str
    state: str


@dataclass(frozen=True)
class Presence:
    """A user's presence: ``online``, ``away`` or ``offline`` (``last_seen`` in ms, or ``None``)."""

    user_id: str
    state: str
    last_seen: int | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Presence:
        return cls(user_id=str(data["user_id"]), state=str(data["state"]), last_seen=data.get("last_seen"))


@dataclass(frozen=True)
class ConversationChange:
    """A conversation was ``added`` (joined, created), ``removed`` (left) or ``updated``."""

    event: str
    conversation: Conversation


@dataclass(frozen=True)
class ConnectionState:
    """The connection went ``connected`` (open and resumed: nothing missed) or ``disconnected``
    (``code`` the WebSocket close code if any; ``retry_in_s`` the wait before the next try;
    ``reason`` e.g. ``reconnect frame``, ``no pong``, ``closed 1012``)."""

    state: Literal["connected", "disconnected"]
    url: str
    code: int | None = None
    reason: str = ""
    retry_in_s: float | None = None


@dataclass(frozen=True)
class ErrorEvent:
    """An ``error`` frame that answers no pending call (e.g. ``watch`` naming strangers, a
    typing frame over the rate limit)."""

    code: str
    message: str
    ref: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Event = MessageEvent | Receipt | Typing | Presence | ConversationChange | ConnectionState | ErrorEvent
