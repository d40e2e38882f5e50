"""Client frames: parsing and validation into typed models, before any handler runs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from events import MessageKind
from events.errors import Invalid, TooLarge


class _Frame(BaseModel):
    # Unknown fields are ignored so that clients written for later protocol versions still work.
    model_config = ConfigDict(extra="ignore", frozen=True)
    ref: str | None = None


class SendFrame(_Frame):
    type: Literal["send"]
    client_msg_id: str = Field(min_length=1, max_length=64)
    conversation_id: str = Field(min_length=1, max_length=256)
    kind: MessageKind = "text"
    body: str = ""
    media_id: str | None = Field(default=None, max_length=128)
    # kind "encrypted" (end-to-end encryption); checked by commands/encryption.py, so an
    # oversized ciphertext is 413 like an oversized body
    ciphertext: str | None = None
    algorithm: str | None = None
    session_id: str | None = None
    sender_device: str | None = None


class PingFrame(_Frame):
    type: Literal["ping"]


class ReceiptFrame(_Frame):
    type: Literal["receipt"]
    conversation_id: str = Field(min_length=1, max_length=256)
    message_id: str = Field(pattern=r"^[0-9]{1,19}$")
    status: Literal["delivered", "read"]


class ViewFrame(_Frame):
    type: Literal["view"]
    conversation_id: str | None = Field(max_length=256)


class TypingFrame(_Frame):
    type: Literal["typing"]
    conversation_id: str = Field(min_length=1, max_length=256)
    state: Literal["start", "stop"]


class PresenceFrame(_Frame):
    type: Literal["presence"]
    state: Literal["online", "away"]


MAX_WATCH = 500


class WatchFrame(_Frame):
    type: Literal["watch"]
    user_ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(max_length=MAX_WATCH)


FRAMES: dict[str, type[_Frame]] = {
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


def parse_frame(raw: str | bytes, max_bytes: int) -> tuple[Any, _Frame]:
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
