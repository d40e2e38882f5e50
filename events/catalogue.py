"""Event models, v1, and their wire codec.

Rules: frozen, ``extra="forbid"``, a ``type`` literal and a ``v`` version. A change that old
readers cannot ignore gets a new ``v`` and an upcaster beside the class, registered in
``_UPCASTERS``, so the log (and the archive) can be read forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, TypeAdapter

MessageKind = Literal["text", "image", "video", "file"]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MediaRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    media_id: str
    content_type: str
    size: int


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


# The union of every event; later events join it as ``Annotated[A | B, Field(discriminator="type")]``.
ChatEvent = MessageSent

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
