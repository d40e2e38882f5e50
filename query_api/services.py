"""The gateway's services: what a frame or a request asks of the write side (and the one read
that merges two stores), in one place, so the WebSocket and HTTP handlers run the same code.
Each takes its ports in; the shell's composition root (``tidings.gateway_root``) builds them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel

from commands import EventLog, IdempotencyStore, IdGenerator, Limits, SendMessage, SendResult, send_message
from commands.direct import DirectChats, open_direct
from commands.encryption import check_kind, enable_direct_encryption
from commands.group_handlers import GroupCommand, change_group, create_group
from commands.groups import CreateGroup
from commands.media import MediaService
from commands.membership import require_member
from commands.ports import Directory, Locks
from commands.presence import PresenceStore
from commands.rate_limits import NoLimits, RateLimiter
from commands.receipts import RecordReceipt, Watermarks, record_receipt
from events import DM_PREFIX, GroupEvent
from events.errors import Invalid
from projections.views import PresenceView

ReceiptStatus = Literal["delivered", "read"]


@dataclass
class Messaging:
    """Sends and receipts, from a frame or from a request body."""

    event_log: EventLog
    idempotency: IdempotencyStore
    ids: IdGenerator
    limits: Limits
    directory: Directory
    watermarks: Watermarks
    limiter: RateLimiter = field(default_factory=NoLimits)
    media: MediaService | None = None  # uploads and downloads (the object store)
    direct_chats: DirectChats = field(init=False)

    def __post_init__(self) -> None:
        self.direct_chats = DirectChats(self.directory)

    async def send(
        self, user_id: str, device_id: str, conversation_id: str, request: BaseModel
    ) -> SendResult:
        """Send what a ``send`` frame or a ``POST .../messages`` body asks for."""
        await self.limiter.check("send", user_id)
        cmd = SendMessage(
            sender_id=user_id,
            device_id=device_id,
            conversation_id=conversation_id,
            **request.model_dump(
                include={
                    *("client_msg_id", "kind", "body", "media_id"),
                    *("ciphertext", "algorithm", "session_id", "sender_device"),
                }
            ),
        )
        service, media = self.media, None
        if service is not None and cmd.kind not in ("text", "encrypted"):
            # Media is never sent in the clear into an encrypted conversation: that is 400,
            # whatever the media id names (it goes inside the ciphertext there).
            check_kind(encrypted=await self.directory.encrypted(conversation_id), kind=cmd.kind, fields={})
            media = await service.for_send(user_id, cmd.media_id, cmd.kind)
        result = await send_message(
            cmd,
            log=self.event_log,
            idempotency=self.idempotency,
            ids=self.ids,
            limits=self.limits,
            directory=self.directory,
            media=media,
        )
        if service is not None and media is not None:
            await service.sent(media, result.conversation_id, result.message_id)
        # Before the ack: the two users of a direct chat share it from its first message on.
        await self.direct_chats.sent(result.event)
        return result

    async def receipt(
        self, user_id: str, device_id: str, conversation_id: str, message_id: str, status: ReceiptStatus
    ) -> None:
        """Record what a ``receipt`` frame or a ``POST .../receipts`` body asks for."""
        cmd = RecordReceipt(
            user_id=user_id,
            device_id=device_id,
            conversation_id=conversation_id,
            message_id=int(message_id),
            status=status,
        )
        await record_receipt(cmd, log=self.event_log, directory=self.directory, watermarks=self.watermarks)


@dataclass
class Conversations:
    """Opening direct conversations, creating groups and changing them."""

    event_log: EventLog
    directory: Directory
    locks: Locks
    ids: IdGenerator
    max_members: int

    async def open_direct(self, user_id: str, conversation_id: str) -> None:
        """The direct conversation is in ``user_id``'s inbox from now on (a fact in the log)."""
        await open_direct(
            user_id, conversation_id, log=self.event_log, directory=self.directory, ids=self.ids
        )

    async def enable_direct_encryption(self, user_id: str, conversation_id: str) -> None:
        """The direct conversation is end-to-end encrypted from now on (once; never undone)."""
        await enable_direct_encryption(
            user_id, conversation_id, log=self.event_log, directory=self.directory, ids=self.ids
        )

    async def create_group(self, cmd: CreateGroup) -> GroupEvent:
        return await create_group(
            cmd, log=self.event_log, directory=self.directory, ids=self.ids, max_members=self.max_members
        )

    async def change(self, cmd: GroupCommand) -> GroupEvent | None:
        """One membership or metadata change of a group; ``None`` when it changes nothing."""
        if cmd.conversation_id.startswith(DM_PREFIX):
            await require_member(self.directory, cmd.conversation_id, cmd.actor_id)
            raise Invalid("a direct conversation has no members to change")
        return await change_group(
            cmd,
            log=self.event_log,
            directory=self.directory,
            locks=self.locks,
            ids=self.ids,
            max_members=self.max_members,
        )


class PresenceRecords(Protocol):
    async def read(self, user_ids: Sequence[str]) -> dict[str, PresenceView]:
        """The last recorded transitions (durable ``last_seen``) of those users that have one."""


@dataclass
class PresenceReads:
    """Presence as users are shown it: live from the store, ``last_seen`` of the forgotten from
    the durable record."""

    store: PresenceStore
    records: PresenceRecords

    async def of(self, user_ids: Sequence[str]) -> list[PresenceView]:
        """Live presence from the store; ``last_seen`` of offline users the store forgot (a
        Redis restart) comes from the durable record."""
        views = await self.store.read(user_ids)
        forgotten = [v.user_id for v in views if v.state == "offline" and v.last_seen is None]
        if not forgotten:
            return views
        records = await self.records.read(forgotten)
        out = []
        for view in views:
            record = records.get(view.user_id)
            if record is not None and view.state == "offline" and view.last_seen is None:
                # Offline now whatever the record says (no live socket in the store).
                view = PresenceView(view.user_id, "offline", record.last_seen, view.at)
            out.append(view)
        return out
