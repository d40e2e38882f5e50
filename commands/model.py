"""Command models (imperative names) and the pure decisions that turn them into events."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from commands.encryption import ENVELOPE_FIELDS, check_envelope, check_kind
from events import MediaRef, MessageKind, MessageSent
from events.errors import Invalid, NotFound, TooLarge


@dataclass(frozen=True)
class Limits:
    max_body_chars: int = 4000


class SendMessage(BaseModel):
    """A member asks to append a message to a conversation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sender_id: str
    device_id: str
    conversation_id: str = Field(min_length=1, max_length=256)
    client_msg_id: str = Field(min_length=1, max_length=64)
    kind: MessageKind = "text"
    body: str = ""
    media_id: str | None = None
    # kind "encrypted" only (commands/encryption.py)
    ciphertext: str | None = None
    algorithm: str | None = None
    session_id: str | None = None
    sender_device: str | None = None


def decide_send(
    cmd: SendMessage,
    *,
    message_id: int,
    ts: int,
    limits: Limits,
    media: MediaRef | None = None,
    encrypted: bool = False,
) -> MessageSent:
    """Validate a send by a member; return the event it produces. ``media`` is what the media
    read model says of ``cmd.media_id`` (None when it knows no such media); ``encrypted`` whether
    the conversation is end-to-end encrypted."""
    # Only the envelope's fields matter there: no model_dump of the whole command on every send.
    envelope = {name: getattr(cmd, name) for name in (*ENVELOPE_FIELDS, "sender_device")}
    check_kind(encrypted=encrypted, kind=cmd.kind, fields=envelope)
    if cmd.kind == "encrypted":
        if cmd.body or cmd.media_id is not None:
            raise Invalid("an encrypted message carries no body or media_id (they go inside the ciphertext)")
        check_envelope(
            device_id=cmd.device_id,
            ciphertext=cmd.ciphertext,
            algorithm=cmd.algorithm,
            session_id=cmd.session_id,
            sender_device=cmd.sender_device,
        )
        return MessageSent(
            conversation_id=cmd.conversation_id,
            message_id=message_id,
            sender_id=cmd.sender_id,
            sender_device=cmd.device_id,
            client_msg_id=cmd.client_msg_id,
            kind="encrypted",
            body="",
            ts=ts,
            ciphertext=cmd.ciphertext,
            algorithm=cmd.algorithm,
            session_id=cmd.session_id,
        )
    if len(cmd.body) > limits.max_body_chars:
        raise TooLarge(f"body exceeds {limits.max_body_chars} characters")
    if cmd.kind == "text":
        if cmd.media_id is not None:
            raise Invalid("a text message carries no media_id")
        if not cmd.body.strip():
            raise Invalid("a text message needs a non-empty body")
    else:
        if not cmd.media_id:
            raise Invalid(f"a {cmd.kind} message needs a media_id")
        if media is None or media.media_id != cmd.media_id:
            raise NotFound(f"no media {cmd.media_id!r}")
    return MessageSent(
        conversation_id=cmd.conversation_id,
        message_id=message_id,
        sender_id=cmd.sender_id,
        sender_device=cmd.device_id,
        client_msg_id=cmd.client_msg_id,
        kind=cmd.kind,
        body=cmd.body,
        media=media if cmd.kind != "text" else None,
        ts=ts,
    )
