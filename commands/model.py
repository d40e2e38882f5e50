"""Command models (imperative names) and the pure decisions that turn them into events."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from events import MessageKind, MessageSent, dm_members
from events.errors import Forbidden, Invalid, NotFound, TooLarge


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


def conversation_members(conversation_id: str) -> tuple[str, ...]:
    """Members of a conversation the write side can resolve without a read model.

    Direct conversations exist by their id alone. Ids of other shapes are not known here yet,
    so they are ``not_found``; a malformed ``dm:`` id is ``invalid``.
    """
    if conversation_id.startswith("dm:"):
        members = dm_members(conversation_id)
        if members is None:
            raise Invalid("a direct conversation id is dm:<a>:<b> with two user ids in byte order")
        return members
    raise NotFound(f"no conversation {conversation_id!r}")


def decide_send(cmd: SendMessage, *, message_id: int, ts: int, limits: Limits) -> MessageSent:
    """Validate and authorize a send; return the event it produces."""
    members = conversation_members(cmd.conversation_id)
    if cmd.sender_id not in members:
        raise Forbidden("not a member of this conversation")
    if len(cmd.body) > limits.max_body_chars:
        raise TooLarge(f"body exceeds {limits.max_body_chars} characters")
    if cmd.kind == "text":
        if cmd.media_id is not None:
            raise Invalid("a text message carries no media_id")
        if not cmd.body.strip():
            raise Invalid("a text message needs a non-empty body")
    else:
        # Media messages need the media store, which is not built yet: no media_id can exist.
        if not cmd.media_id:
            raise Invalid(f"a {cmd.kind} message needs a media_id")
        raise NotFound(f"no media {cmd.media_id!r}")
    return MessageSent(
        conversation_id=cmd.conversation_id,
        message_id=message_id,
        sender_id=cmd.sender_id,
        sender_device=cmd.device_id,
        client_msg_id=cmd.client_msg_id,
        kind=cmd.kind,
        body=cmd.body,
        media=None,
        ts=ts,
    )
