"""Events <-> rows: one codec per event shape that a store keeps as columns.

The archive's Parquet tables (``archive.tables``), the warm tier's Cassandra ``messages`` table
(``projections.messages``) and the readers of both (history, replay, sync below the prune
horizon) map an event to its columns and back here, and nowhere else. A new field of
``MessageSent`` or ``ReceiptRecorded`` is added here once (and to the stores' schemas).

Rows are plain tuples in the column order named below. The media reference is stored as its
JSON text (``media_json``), or null.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from events.catalogue import MediaRef, MessageSent, ReceiptRecorded

# -- MessageSent -----------------------------------------------------------------------------
# The event's fields as columns, in this order (the version ``v`` is not among them: the
# archive keeps it after these, the warm tier not at all).
MESSAGE_COLUMNS = (
    "conversation_id",
    "message_id",
    "sender_id",
    "sender_device",
    "client_msg_id",
    "kind",
    "body",
    "media",
    "ts",
)
# An end-to-end encrypted message's envelope (kind ``encrypted``, body empty): the client's
# ciphertext as sent and how to decrypt it; null for every other kind. Stores that existed
# before encryption keep these columns after their others (the archive after the log position).
ENVELOPE_COLUMNS = ("ciphertext", "algorithm", "session_id")
_NO_ENVELOPE = (None, None, None)
# What a reader selects to answer with the protocol's Message object (``message_object``);
# the conversation id is known from the query.
MESSAGE_OBJECT_COLUMNS = (
    *("message_id", "sender_id", "client_msg_id", "kind", "body", "media", "ts"),
    *ENVELOPE_COLUMNS,
    "sender_device",
)


def media_json(media: MediaRef | None) -> str | None:
    """The media reference as a column holds it."""
    return orjson.dumps(media.model_dump()).decode() if media else None


def message_row(event: MessageSent) -> tuple[Any, ...]:
    """The event's ``MESSAGE_COLUMNS``."""
    return (
        event.conversation_id,
        event.message_id,
        event.sender_id,
        event.sender_device,
        event.client_msg_id,
        event.kind,
        event.body,
        media_json(event.media),
        event.ts,
    )


def envelope_row(event: MessageSent) -> tuple[Any, ...]:
    """The event's ``ENVELOPE_COLUMNS`` (nulls unless it is encrypted)."""
    return (event.ciphertext, event.algorithm, event.session_id)


def message_from_row(row: Sequence[Any], v: Any, envelope: Sequence[Any] = _NO_ENVELOPE) -> MessageSent:
    """The event back from its ``MESSAGE_COLUMNS`` (``ts`` in Unix ms), its version and its
    ``ENVELOPE_COLUMNS``."""
    cid, mid, sender, device, cmid, kind, body, media, ts = row
    ciphertext, algorithm, session_id = envelope
    return MessageSent(
        conversation_id=cid,
        message_id=mid,
        sender_id=sender,
        sender_device=device,
        client_msg_id=cmid,
        kind=kind,
        body=body,
        media=MediaRef(**orjson.loads(media)) if media else None,
        ts=ts,
        v=v,
        ciphertext=ciphertext,
        algorithm=algorithm,
        session_id=session_id,
    )


def message_object(conversation_id: str, row: Sequence[Any]) -> dict[str, Any]:
    """The protocol's Message object from a stored row's ``MESSAGE_OBJECT_COLUMNS`` (``ts`` in
    Unix ms), as ``projections.wire.message_object`` builds it from the event: an encrypted
    message has ``body`` and ``media`` null and its envelope, ``ts`` last."""
    message_id, sender_id, client_msg_id, kind, body, media, ts, ciphertext, algorithm, session_id, device = (
        row
    )
    obj: dict[str, Any] = {
        "message_id": str(message_id),
        "conversation_id": conversation_id,
        "sender_id": sender_id,
        "client_msg_id": client_msg_id,
        "kind": kind,
        "body": body,
        "media": orjson.loads(media) if media else None,
    }
    if kind == "encrypted":
        obj.update(body=None, media=None, ciphertext=ciphertext, algorithm=algorithm)
        obj.update(session_id=session_id, sender_device=device)
    obj["ts"] = int(ts)
    return obj


# -- ReceiptRecorded -------------------------------------------------------------------------
RECEIPT_COLUMNS = ("conversation_id", "user_id", "device_id", "message_id", "status", "ts")


def receipt_row(event: ReceiptRecorded) -> tuple[Any, ...]:
    """The event's ``RECEIPT_COLUMNS``."""
    return (event.conversation_id, event.user_id, event.device_id, event.message_id, event.status, event.ts)


def receipt_from_row(row: Sequence[Any], v: Any) -> ReceiptRecorded:
    """The event back from its ``RECEIPT_COLUMNS`` (``ts`` in Unix ms) and its version."""
    cid, uid, device, mid, status, ts = row
    return ReceiptRecorded(
        conversation_id=cid, user_id=uid, device_id=device, message_id=mid, status=status, ts=ts, v=v
    )
