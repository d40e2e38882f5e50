"""Events for tests, built in one place: every field has a default, and a test names only what
it is about (``message_sent(7, body="hi")``). A new required field of an event is added here
once, not in every test that builds one."""

from __future__ import annotations

from typing import Any

from events import MessageSent, ReceiptRecorded, snowflake_ts


def message_sent(message_id: int = 1, **overrides: Any) -> MessageSent:
    """A text message from alice's device ``d`` in ``dm:alice:bob``, with client id
    ``c<id>``, body ``m<id>`` and the Snowflake time of its id."""
    fields: dict[str, Any] = {
        "conversation_id": "dm:alice:bob",
        "message_id": message_id,
        "sender_id": "alice",
        "sender_device": "d",
        "client_msg_id": f"c{message_id}",
        "kind": "text",
        "body": f"m{message_id}",
        "media": None,
        "ts": snowflake_ts(message_id),
    }
    fields.update(overrides)
    return MessageSent(**fields)


def receipt_recorded(message_id: int = 1, **overrides: Any) -> ReceiptRecorded:
    """bob's device ``d`` read message ``message_id`` of ``dm:alice:bob``, at the Snowflake
    time of that id."""
    fields: dict[str, Any] = {
        "conversation_id": "dm:alice:bob",
        "user_id": "bob",
        "device_id": "d",
        "message_id": message_id,
        "status": "read",
        "ts": snowflake_ts(message_id),
    }
    fields.update(overrides)
    return ReceiptRecorded(**fields)
