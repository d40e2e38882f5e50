"""The wire: every byte string that crosses the client protocol or the pub/sub between the
deliver stage and the gateways, in one module.

- Inbound frames (client to server): typed, validated models and ``parse_frame``.
- Outbound frames (server to client): the protocol's JSON objects and frames, built from
  events once per message and reused as bytes (``message``, ``presence``, ``typing``,
  ``receipt``, ``conversation``, ``ack``, ``pong``, ``error``, ``reconnect``).
- The pub/sub envelope: payloads carry a one-byte kind so the gateway routes without parsing
  JSON:
  - on a user channel: ``m<frame>``; ``+<cid>\\0<frame>`` (this user joined cid);
    ``-<cid>\\0<frame>`` (this user left cid); ``t<cid>\\0<typist>\\0<frame>`` (typing: only
    to sockets viewing cid); ``d<device_id>\\0<frame>`` (to that device's sockets only);
  - on a user's presence channel: ``p<at>\\0<frame>`` (to the sockets watching that user;
    ``at`` orders the user's transitions, so a late one is dropped);
  - on a group shard channel: ``m<cid>\\0<frame>`` (to the group's local members);
    ``t<cid>\\0<typist>\\0<frame>`` (to those of them viewing cid, but the typist);
  - on either, only when the deliver worker traces: ``~<traceparent>\\0<payload>`` around any
    of the above (the W3C trace context of the worker's ``deliver.push`` span, so the gateway's
    ``gateway.deliver`` span joins the sender's trace); the gateway unwraps it whether or not
    it traces itself, so the client's frame is the same.

It lives in ``projections/`` because both sides of the pub/sub import it: the deliver stage
(``projections.delivery``, run by ``streams``) encodes, the gateway (``query_api``) decodes and
parses; under the layer rules ``query_api`` may import ``projections`` but nothing below may
import ``query_api``, and ``events`` is the event catalogue, not the client protocol.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from events import MessageKind, MessageSent
from events.errors import Invalid, TooLarge

# --- inbound frames ---------------------------------------------------------------------------


class Frame(BaseModel):
    # Unknown fields are ignored so that clients written for later protocol versions still work.
    model_config = ConfigDict(extra="ignore", frozen=True)
    ref: str | None = None


class SendFields(BaseModel):
    """What a send carries, the same in a ``send`` frame and a ``POST .../messages`` body
    (``query_api.messages_api.PostMessage``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    client_msg_id: str = Field(min_length=1, max_length=64)
    kind: MessageKind = "text"
    body: str = ""
    media_id: str | None = Field(default=None, max_length=128)
    # kind "encrypted" (end-to-end encryption); checked by commands/encryption.py, so an
    # oversized ciphertext is 413 like an oversized body
    ciphertext: str | None = None
    algorithm: str | None = None
    session_id: str | None = None
    sender_device: str | None = None


class SendFrame(Frame, SendFields):
    type: Literal["send"]
    conversation_id: str = Field(min_length=1, max_length=256)


class PingFrame(Frame):
    type: Literal["ping"]


class ReceiptFrame(Frame):
    type: Literal["receipt"]
    conversation_id: str = Field(min_length=1, max_length=256)
    message_id: str = Field(pattern=r"^[0-9]{1,19}$")
    status: Literal["delivered", "read"]


class ViewFrame(Frame):
    type: Literal["view"]
    conversation_id: str | None = Field(max_length=256)


class TypingFrame(Frame):
    type: Literal["typing"]
    conversation_id: str = Field(min_length=1, max_length=256)
    state: Literal["start", "stop"]


class PresenceFrame(Frame):
    type: Literal["presence"]
    state: Literal["online", "away"]


MAX_WATCH = 500


class WatchFrame(Frame):
    type: Literal["watch"]
    user_ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(max_length=MAX_WATCH)


FRAMES: dict[str, type[Frame]] = {
    "send": SendFrame,
    "ping": PingFrame,
    "receipt": ReceiptFrame,
    "view": ViewFrame,
    "typing": TypingFrame,
    "presence": PresenceFrame,
    "watch": WatchFrame,
}
# Frame types of the protocol that this server does not handle yet; they get a clear error.
NOT_YET: frozenset[str] = frozenset()


def parse_frame(raw: str | bytes, max_bytes: int) -> tuple[Any, Frame]:
    """``(ref, frame)``; raises ``Invalid``/``TooLarge`` carrying the best ``ref`` known.

    The ``ref`` of the error is the frame's own when it could be read, else ``None``.
    """
    if isinstance(raw, bytes):
        raise FrameError(None, Invalid("frames are JSON text, not binary"))
    if len(raw) > max_bytes // 4 and len(raw.encode()) > max_bytes:
        raise FrameError(None, TooLarge(f"frame exceeds {max_bytes} bytes"))
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FrameError(None, Invalid(f"frame is not valid JSON: {exc}")) from exc
    if not isinstance(data, dict):
        raise FrameError(None, Invalid("a frame is a JSON object"))
    ref = data.get("ref")
    if ref is not None and not isinstance(ref, str):
        raise FrameError(None, Invalid("ref must be a string"))
    kind = data.get("type")
    model = FRAMES.get(kind) if isinstance(kind, str) else None
    if model is None:
        if isinstance(kind, str) and kind in NOT_YET:
            raise FrameError(ref, Invalid(f"frame type {kind!r} is not supported by this server yet"))
        raise FrameError(ref, Invalid(f"unknown frame type {kind!r}"))
    try:
        return ref, model.model_validate(data)
    except ValidationError as exc:
        raise FrameError(ref, Invalid(_describe(exc))) from exc


class FrameError(Exception):
    def __init__(self, ref: Any, error: Invalid | TooLarge) -> None:
        super().__init__(error.message)
        self.ref = ref
        self.error = error


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "frame"
    return f"{where}: {first['msg']}"


# --- outbound frames --------------------------------------------------------------------------


def message_object(event: MessageSent) -> dict[str, Any]:
    """The protocol's Message object (``message_id`` as a decimal string). An end-to-end
    encrypted message has ``body`` and ``media`` null and the ciphertext as the sender sent it,
    with ``algorithm``, ``session_id`` and ``sender_device``. ``ts`` stays last
    (``message_frame_ts``); ``events.rows.message_object`` gives the same object from a row."""
    obj: dict[str, Any] = {
        "message_id": str(event.message_id),
        "conversation_id": event.conversation_id,
        "sender_id": event.sender_id,
        "client_msg_id": event.client_msg_id,
        "kind": event.kind,
        "body": event.body,
        "media": event.media.model_dump() if event.media else None,
    }
    if event.kind == "encrypted":
        obj.update(body=None, media=None, ciphertext=event.ciphertext, algorithm=event.algorithm)
        obj.update(session_id=event.session_id, sender_device=event.sender_device)
    obj["ts"] = event.ts
    return obj


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


def typing_frame(cid: str, user_id: str, state: str) -> bytes:
    return orjson.dumps({"type": "typing", "conversation_id": cid, "user_id": user_id, "state": state})


def receipt_frame(conversation_id: str, user_id: str, message_id: int, status: str) -> bytes:
    return orjson.dumps(
        {
            "type": "receipt",
            "conversation_id": conversation_id,
            "user_id": user_id,
            "message_id": str(message_id),
            "status": status,
        }
    )


def conversation_frame(change: str, conversation: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": "conversation", "event": change, "conversation": conversation})


def group_object(
    cid: str, title: str | None, member_count: int, ts: int, encrypted: bool = False
) -> dict[str, Any]:
    """A group's Conversation object as a ``conversation`` frame carries it."""
    return {
        "conversation_id": cid,
        "kind": "group",
        "title": title,
        "member_count": member_count,
        "last_message": None,
        "unread_count": 0,
        "last_activity_ts": ts,
        "encrypted": encrypted,
    }


def ack_frame(ref: str | None, client_msg_id: str, message_id: int, conversation_id: str, ts: int) -> bytes:
    """The ``ack`` of an accepted ``send``."""
    return orjson.dumps(
        {
            "type": "ack",
            "ref": ref,
            "client_msg_id": client_msg_id,
            "message_id": str(message_id),
            "conversation_id": conversation_id,
            "ts": ts,
        }
    )


def pong_frame(ref: str | None) -> bytes:
    return orjson.dumps({"type": "pong", "ref": ref})


def error_frame(ref: Any, code: str, message: str, retry_after: int | None = None) -> bytes:
    frame = {"type": "error", "ref": ref, "code": code, "message": message}
    if retry_after is not None:
        frame["retry_after"] = retry_after
    return orjson.dumps(frame)


# --- the pub/sub envelope ---------------------------------------------------------------------

MESSAGE, JOINED, LEFT, TYPING, PRESENCE = b"m", b"+", b"-", b"t", b"p"
TO_DEVICE = b"d"
TRACED = b"~"


def tagged(kind: bytes, tag: str, frame: bytes) -> bytes:
    """``<kind><tag>\\0<frame>``: a conversation id, a device id or a presence ``at``."""
    return kind + tag.encode() + b"\0" + frame


def traced(traceparent: str, payload: bytes) -> bytes:
    """``payload`` with the trace context of the delivery that published it (``untag`` reads
    it back: the tag is the traceparent, the frame the payload)."""
    return tagged(TRACED, traceparent, payload)


def typing_payload(conversation_id: str, typist: str, frame: bytes) -> bytes:
    return TYPING + conversation_id.encode() + b"\0" + typist.encode() + b"\0" + frame


def untag(payload: bytes) -> tuple[bytes, bytes]:
    """``(tag, frame)`` of a ``tagged`` payload (the tag still as bytes)."""
    tag, _, frame = payload[1:].partition(b"\0")
    return tag, frame


def untyping(payload: bytes) -> tuple[str, str, bytes]:
    """``(conversation_id, typist, frame)`` of a ``typing_payload``."""
    cid, typist, frame = payload[1:].split(b"\0", 2)
    return cid.decode(), typist.decode(), frame
