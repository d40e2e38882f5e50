"""Receipts: a member moves their delivered or read watermark forward (``read`` implies
``delivered``). A receipt that would not move the watermark appends nothing."""

from __future__ import annotations

import time
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from commands.membership import member_role
from commands.ports import Directory, EventLog
from events import ReceiptRecorded, snowflake_ts
from events.errors import Invalid

# A watermark may not point this far past the server's clock (ids carry their time).
MAX_FUTURE_MS = 60_000


class RecordReceipt(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: str
    device_id: str
    conversation_id: str
    message_id: int
    status: Literal["delivered", "read"]


class Watermarks(Protocol):
    async def watermarks(self, conversation_id: str, user_id: str) -> tuple[int, int]:
        """``(delivered, read)`` as the read model has them, 0 where none."""


async def record_receipt(
    cmd: RecordReceipt,
    *,
    log: EventLog,
    directory: Directory,
    watermarks: Watermarks,
    now_ms: int | None = None,
) -> ReceiptRecorded | None:
    await member_role(directory, cmd.conversation_id, cmd.user_id)
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    if cmd.message_id <= 0 or snowflake_ts(cmd.message_id) > now + MAX_FUTURE_MS:
        raise Invalid("message_id is not a message of this conversation's time")
    delivered, read = await watermarks.watermarks(cmd.conversation_id, cmd.user_id)
    current = read if cmd.status == "read" else delivered
    if cmd.message_id <= current:
        return None  # watermarks never move back; nothing to record
    event = ReceiptRecorded(
        conversation_id=cmd.conversation_id,
        user_id=cmd.user_id,
        device_id=cmd.device_id,
        message_id=cmd.message_id,
        status=cmd.status,
        ts=now,
    )
    await log.append(event)
    return event
