"""The gateway's services: what a frame or a request asks of the write side (and the one read
that merges two stores), in one place, so the WebSocket and HTTP handlers run the same code.
Each takes its ports in; the shell's composition root (``tidings.gateway_root``) builds them.
The route modules (``*_api.py``, ``ws.py``) import nothing of ``commands``: what they need of
the write side is here, the limits their bodies are checked against included
(``tests/unit/test_architecture.py``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from commands import EventLog, IdempotencyStore, IdGenerator, Limits, SendMessage, SendResult, send_message
from commands import keys as key_commands
from commands import push as push_commands
from commands import to_device as to_device_commands
from commands.direct import DirectChats, open_direct
from commands.encryption import check_kind, enable_direct_encryption
from commands.group_handlers import GroupCommand, change_group, create_group
from commands.groups import MAX_TITLE_CHARS, AddMembers, ChangeRole, CreateGroup, RemoveMember, RenameGroup
from commands.keys import ClaimedKey, KeyStore
from commands.media import MediaService
from commands.membership import member_role, require_member
from commands.ports import ConversationInfo, Directory, Locks
from commands.presence import PresenceStore
from commands.push import AllowedHosts, PushSettingsWriter, RegisterPush
from commands.rate_limits import NoLimits, RateLimiter, limit_wins
from commands.receipts import RecordReceipt, Watermarks, record_receipt
from commands.to_device import ToDevice, ToDeviceQueue
from events import DM_PREFIX, GroupEvent, Role, SignedKey
from events import keys as redis_keys
from events.errors import Invalid, Unavailable
from projections.delivery import Push, to_device_push
from projections.encryption import WATCHED_PLAIN_TTL_S
from projections.views import DeviceKeys, PresenceView
from projections.wire import SendFields

log = logging.getLogger(__name__)
# What a send's request carries into the command (its conversation id is the caller's).
_SEND_FIELDS: set[str] = set(SendFields.model_fields)

ReceiptStatus = Literal["delivered", "read"]
PushProvider = Literal["webpush", "fcm", "apns", "webhook"]
# The bounds the route modules check request bodies against, from the write side that enforces them.
MAX_GROUP_TITLE_CHARS = MAX_TITLE_CHARS
MAX_KEYS_PER_CALL = key_commands.MAX_KEYS_PER_CALL
MAX_CLAIMS_PER_CALL = key_commands.MAX_CLAIMS_PER_CALL
MAX_TO_DEVICE_PER_CALL = to_device_commands.MAX_MESSAGES_PER_CALL
# The media service is the write side's own (uploads, downloads, their checks and quotas).
Media = MediaService


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
        self, user_id: str, device_id: str, conversation_id: str, request: SendFields
    ) -> SendResult:
        """Send what a ``send`` frame or a ``POST .../messages`` body asks for.

        The ``send`` rate limit is asked with the idempotency claim (``send_message``); what
        fails before it (a bad command, media the sender may not send) asks it alone first, so
        a send over its limit is ``rate_limited`` whatever else is wrong with it."""
        service, media = self.media, None
        async with limit_wins(self.limiter, "send", user_id):
            cmd = SendMessage(
                sender_id=user_id,
                device_id=device_id,
                conversation_id=conversation_id,
                **{name: getattr(request, name) for name in _SEND_FIELDS},
            )
            if service is not None and cmd.kind not in ("text", "encrypted"):
                # Media is never sent in the clear into an encrypted conversation: that is 400,
                # whatever the media id names (it goes inside the ciphertext there).
                encrypted = await self.directory.encrypted(conversation_id)
                check_kind(encrypted=encrypted, kind=cmd.kind, fields={})
                media = await service.for_send(user_id, cmd.media_id, cmd.kind)
        result = await send_message(
            cmd,
            log=self.event_log,
            idempotency=self.idempotency,
            ids=self.ids,
            limits=self.limits,
            directory=self.directory,
            media=media,
            limiter=self.limiter,
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
    # The gateway's publish path: tells the other gateways of a chat turned encrypted.
    publish: Callable[[list[Push]], Awaitable[None]] | None = None

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
        if self.publish is None:
            return
        # Also when it already was encrypted: a client that asks again after an error heals a
        # broadcast that was lost. If Redis fails, the other gateways learn it by their next
        # read of the flag, within ``WATCHED_PLAIN_TTL_S`` (docs/e2ee.md); the fact is in the
        # log and the read model already, so the request succeeds.
        try:
            await self.publish([Push(redis_keys.encryption_channel(), conversation_id.encode())])
        except Unavailable:
            log.warning(
                "encryption of %s not broadcast; other gateways read it within %g s",
                conversation_id,
                WATCHED_PLAIN_TTL_S,
            )

    async def create_group(self, cmd: CreateGroup) -> GroupEvent:
        return await create_group(
            cmd, log=self.event_log, directory=self.directory, ids=self.ids, max_members=self.max_members
        )

    async def role(self, conversation_id: str, user_id: str) -> Role:
        """The user's role in the conversation: 400 for a malformed id, 404 for an unknown
        one, 403 for a stranger."""
        return await member_role(self.directory, conversation_id, user_id)

    async def of_member(self, conversation_id: str, user_id: str) -> tuple[ConversationInfo, Role]:
        """The conversation's row and the user's role, with the errors of ``role``."""
        return await require_member(self.directory, conversation_id, user_id)

    async def create(
        self, actor_id: str, title: str, members: Sequence[str], *, encrypted: bool
    ) -> GroupEvent:
        """A new group of ``actor_id`` (its owner) and ``members``."""
        return await self.create_group(
            CreateGroup(actor_id=actor_id, title=title, members=tuple(members), encrypted=encrypted)
        )

    async def rename(self, actor_id: str, conversation_id: str, title: str) -> GroupEvent | None:
        return await self.change(RenameGroup(actor_id=actor_id, conversation_id=conversation_id, title=title))

    async def add_members(
        self, actor_id: str, conversation_id: str, user_ids: Sequence[str]
    ) -> GroupEvent | None:
        return await self.change(
            AddMembers(actor_id=actor_id, conversation_id=conversation_id, user_ids=tuple(user_ids))
        )

    async def remove_member(self, actor_id: str, conversation_id: str, user_id: str) -> GroupEvent | None:
        return await self.change(
            RemoveMember(actor_id=actor_id, conversation_id=conversation_id, user_id=user_id)
        )

    async def set_role(
        self, actor_id: str, conversation_id: str, user_id: str, role: Role
    ) -> GroupEvent | None:
        return await self.change(
            ChangeRole(actor_id=actor_id, conversation_id=conversation_id, user_id=user_id, role=role)
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


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Keys:
    """The key directory of end-to-end encryption: every key is checked (base64, length,
    Ed25519 signature) in ``commands.keys`` before anything is stored or appended."""

    event_log: EventLog
    store: KeyStore

    async def publish(
        self, user_id: str, device_id: str, identity_key: str, signing_key: str, signature: str
    ) -> None:
        """The device's identity and signing keys (again the same: nothing; others: 409)."""
        await key_commands.publish_device_keys(
            user_id, device_id, identity_key, signing_key, signature, store=self.store, log=self.event_log
        )

    async def delete(self, user_id: str, device_id: str) -> None:
        """The device's keys, one-time and fallback keys included, are gone."""
        await key_commands.delete_device_keys(user_id, device_id, store=self.store, log=self.event_log)

    async def add_one_time(
        self, user_id: str, device_id: str, keys: Sequence[SignedKey], fallback: SignedKey | None
    ) -> int:
        """Add signed one-time keys (and a fallback key); how many are unclaimed now."""
        return await key_commands.add_one_time_keys(
            user_id, device_id, list(keys), fallback, store=self.store, log=self.event_log
        )

    async def claim(self, claimer: str, devices: Sequence[tuple[str, str]]) -> list[ClaimedKey]:
        """One key per ``(user, device)`` that has one: a one-time key handed out at most once,
        else the fallback key."""
        return await key_commands.claim_keys(claimer, list(devices), store=self.store, log=self.event_log)

    async def devices(self, user_id: str) -> list[DeviceKeys]:
        return await self.store.devices(user_id)

    async def remaining(self, user_id: str, device_id: str) -> int:
        return await self.store.remaining(user_id, device_id)


@dataclass
class PushSettings:
    """Push registrations and mutes: appended to the user-events topic, then written through
    (``commands.push``; docs/push.md)."""

    event_log: EventLog
    store: PushSettingsWriter
    hosts: AllowedHosts
    directory: Directory
    clock: Callable[[], int] = _now_ms

    async def register(
        self,
        user_id: str,
        token_device_id: str,
        device_id: str,
        provider: PushProvider,
        *,
        endpoint: str | None = None,
        token: str | None = None,
        p256dh: str | None = None,
        auth: str | None = None,
    ) -> tuple[str, str]:
        """Where ``device_id``'s notifications go from now on (the token's own device only);
        ``(device_id, provider)`` as registered."""
        cmd = RegisterPush(
            user_id=user_id,
            token_device_id=token_device_id,
            device_id=device_id,
            provider=provider,
            endpoint=endpoint,
            token=token,
            p256dh=p256dh,
            auth=auth,
        )
        event = await push_commands.register_push(
            cmd, log=self.event_log, store=self.store, hosts=self.hosts, clock=self.clock
        )
        return event.device_id, event.provider

    async def unregister(self, user_id: str, token_device_id: str, device_id: str) -> None:
        await push_commands.unregister_push(
            user_id, token_device_id, device_id, log=self.event_log, store=self.store, clock=self.clock
        )

    async def set_muted(self, user_id: str, conversation_id: str, muted: bool) -> None:
        """Mute or unmute the conversation's notifications for a member (403/404 otherwise)."""
        await require_member(self.directory, conversation_id, user_id)
        await push_commands.set_muted(
            user_id, conversation_id, muted, log=self.event_log, store=self.store, clock=self.clock
        )


@dataclass
class ToDeviceRelay:
    """Ciphertext relayed to other devices: queued for their sync, pushed now when they are
    connected (``commands.to_device``)."""

    queue: ToDeviceQueue
    keys: KeyStore
    publish: Callable[[list[Push]], Awaitable[None]]
    limiter: RateLimiter = field(default_factory=NoLimits)

    @staticmethod
    def position(position: str) -> str:
        """``position`` if it is one (a cursor's to-device or device-list mark), else 400."""
        return to_device_commands.check_position(position)

    async def send(self, user_id: str, device_id: str, messages: Sequence[tuple[str, str, str, str]]) -> int:
        """Queue and relay each ``(user, device, type, ciphertext)``; how many were relayed
        (to devices with keys). One bad message sends none."""
        await self.limiter.check("send", user_id)

        async def known(user: str, device: str) -> bool:
            return await self.keys.device(user, device) is not None

        async def relay(user: str, device: str, frame: bytes) -> None:
            try:
                await self.publish([to_device_push(user, device, frame)])
            except Unavailable:
                # Queued already: the push is only the fast path, the device gets it in its sync.
                log.warning("to-device push to %s/%s not published; it waits for the sync", user, device)

        return await to_device_commands.send_to_devices(
            user_id,
            device_id,
            [ToDevice(*m) for m in messages],
            queue=self.queue,
            known=known,
            relay=relay,
        )

    async def pending(
        self, user_id: str, device_id: str, since: str | None, limit: int
    ) -> tuple[list[dict[str, object]], str | None, bool]:
        """The device's frames after ``since`` (those up to it are forgotten), the position for
        the next cursor, and whether more are queued."""
        return await to_device_commands.pending_for(user_id, device_id, since, queue=self.queue, limit=limit)
