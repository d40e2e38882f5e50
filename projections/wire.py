"""The protocol's JSON objects, built from events once per message and reused as bytes."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson

from events import MessageSent


def message_object(event: MessageSent) -> dict[str, Any]:
    """The protocol's Message object (``message_id`` as a decimal string)."""
    if event.kind == "encrypted":
        return encrypted_object(
            event.message_id,
            event.conversation_id,
            event.sender_id,
            event.client_msg_id,
            (event.ciphertext, event.algorithm, event.session_id, event.sender_device),
            event.ts,
        )
    return {
        "message_id": str(event.message_id),
        "conversation_id": event.conversation_id,
        "sender_id": event.sender_id,
        "client_msg_id": event.client_msg_id,
        "kind": event.kind,
        "body": event.body,
        "media": event.media.model_dump() if event.media else None,
        "ts": event.ts,
    }


def encrypted_object(
    message_id: int | str,
    conversation_id: str,
    sender_id: str,
    client_msg_id: str,
    envelope: tuple[str | None, str | None, str | None, str | None],
    ts: int,
) -> dict[str, Any]:
    """The Message object of an end-to-end encrypted message: ``body`` null, the ciphertext as
    the sender sent it, ``(ciphertext, algorithm, session_id, sender_device)``. Every store
    (hot, warm, archive) renders it here, so they agree. ``ts`` stays last (``message_frame_ts``)."""
    ciphertext, algorithm, session_id, sender_device = envelope
    return {
        "message_id": str(message_id),
        "conversation_id": conversation_id,
        "sender_id": sender_id,
        "client_msg_id": client_msg_id,
        "kind": "encrypted",
        "body": None,
        "media": None,
        "ciphertext": ciphertext,
        "algorithm": algorithm,
        "session_id": session_id,
        "sender_device": sender_device,
        "ts": int(ts),
    }


@lru_cache(maxsize=4096)
def message_json(event: MessageSent) -> bytes:
    """Serialized once per message: the hot cache and the pushes of a batch share it (events
    are frozen, so they are their own cache key)."""
    return orjson.dumps(message_object(event))


def presence_object(user_id: str, state: str, last_seen: int | None) -> dict[str, Any]:
    """A user's presence as ``GET /v1/users/{uid}/presence`` answers it."""
    return {"user_id": user_id, "state": state, "last_seen": last_seen}


def presence_frame(user_id: str, state: str, last_seen: int | None) -> bytes:
    """The ``presence`` frame watchers get (a snapshot or a change)."""
    return orjson.dumps({"type": "presence", **presence_object(user_id, state, last_seen)})


def reconnect_frame(after_ms: int) -> bytes:
    """The ``reconnect`` frame of a draining gateway."""
    return orjson.dumps({"type": "reconnect", "after_ms": after_ms})


def message_frame(message: bytes) -> bytes:
    """A ``message`` frame around an already serialized Message object."""
    return b'{"type":"message","message":' + message + b"}"


_MESSAGE_PREFIX = b'{"type":"message","message":{'
_TS = b',"ts":'


def message_frame_ts(frame: bytes) -> int | None:
    """The ``ts`` (Unix ms) of a frame built by ``message_frame``, without parsing the JSON:
    ``message_object`` puts ``ts`` last, so the frame ends with ``,"ts":<digits>}}``. None for
    any other frame."""
    if not frame.startswith(_MESSAGE_PREFIX):
        return None
    at = frame.rfind(_TS, -40)
    if at < 0:
        return None
    digits = frame[at + len(_TS) : -2]
    return int(digits) if digits.isdigit() else None
