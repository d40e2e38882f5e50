"""The per-event fast path: the current shape of the two events that make up nearly all of the
log, turned into archive rows straight from the parsed JSON. It checks exactly what the
catalogue's models check (keys, types, literals) without building a model; anything else (other
versions, media, other types) returns ``None`` and goes through ``archive.slow``, upcasters
included. ``archive.bulk`` does the same checks for a whole fetch at once.

A row here is the table's columns in order (``events.rows``: the event's columns, then ``v``,
the log position, the encryption envelope (null here: encrypted messages take the slow path)
and the day), the same tuple ``archive.slow`` makes from the event.
"""

from __future__ import annotations

from typing import Any

from archive.tables import day

_MESSAGE_KEYS = frozenset(
    (
        *("type", "v", "conversation_id", "message_id", "sender_id", "sender_device", "client_msg_id"),
        *("kind", "body", "media", "ts"),
    )
)
_RECEIPT_KEYS = frozenset(
    ("type", "v", "conversation_id", "user_id", "device_id", "message_id", "status", "ts")
)
_KINDS = frozenset(("text", "image", "video", "file"))
_STATUSES = frozenset(("delivered", "read"))


def fast_message(d: dict[str, Any], p: int, o: int) -> tuple[Any, ...] | None:
    """The ``messages`` row of a current ``message.sent`` without media, else ``None``."""
    if d.keys() != _MESSAGE_KEYS or d["v"] != 1 or d["media"] is not None or d["kind"] not in _KINDS:
        return None
    cid, mid, sender, device, cmid, body, ts = (
        d["conversation_id"],
        d["message_id"],
        d["sender_id"],
        d["sender_device"],
        d["client_msg_id"],
        d["body"],
        d["ts"],
    )
    if type(mid) is not int or type(ts) is not int:
        return None
    if not (type(cid) is str and type(sender) is str and type(device) is str and type(cmid) is str):
        return None
    if type(body) is not str:
        return None
    return (cid, mid, sender, device, cmid, d["kind"], body, None, ts, 1, p, o, None, None, None, day(ts))


def fast_receipt(d: dict[str, Any], p: int, o: int) -> tuple[Any, ...] | None:
    """The ``receipts`` row of a current ``receipt.recorded``, else ``None``."""
    if d.keys() != _RECEIPT_KEYS or d["v"] != 1 or d["status"] not in _STATUSES:
        return None
    cid, uid, device, mid, ts = d["conversation_id"], d["user_id"], d["device_id"], d["message_id"], d["ts"]
    if type(mid) is not int or type(ts) is not int:
        return None
    if not (type(cid) is str and type(uid) is str and type(device) is str):
        return None
    return (cid, uid, device, mid, d["status"], ts, 1, p, o, day(ts))
