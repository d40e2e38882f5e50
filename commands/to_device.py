"""To-device messages of end-to-end encryption: ciphertext from one device to another (Olm
messages carrying Megolm room keys, mostly), relayed and kept until the device syncs past them.

The server cannot read them. Each is stored in the recipient device's queue, then pushed to
that device's sockets; the queue keeps the newest ``MAX_PENDING`` per device (past the bound the
oldest are dropped, and a client that misses a room key asks for it again) and forgets a message
``TTL_S`` after it was sent. A device acknowledges by syncing from a cursor that is past them.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from events import is_valid_user_id
from events.errors import Invalid, NotFound, TooLarge

MAX_MESSAGES_PER_CALL = 100
MAX_CIPHERTEXT_CHARS = 64 * 1024
MAX_PENDING = 1000  # per device
TTL_S = 7 * 24 * 3600
MAX_TYPE_CHARS = 64
# Redis stream ids: what a sync cursor carries as the device's to-device position.
_POSITION = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


@dataclass(frozen=True)
class ToDevice:
    user_id: str
    device_id: str
    type: str
    ciphertext: str


class ToDeviceQueue(Protocol):
    """The devices' pending to-device messages (``commands.adapters.redis_to_device``)."""

    async def add(self, user_id: str, device_id: str, frame: bytes, *, max_len: int, ttl_s: int) -> str:
        """Queue ``frame`` for the device; its position. Drops the oldest past ``max_len`` and
        what is older than ``ttl_s``."""

    async def after(
        self, user_id: str, device_id: str, position: str | None, limit: int
    ) -> list[tuple[str, bytes]]:
        """Up to ``limit`` queued frames after ``position`` (all from the start when None),
        oldest first, with their positions."""

    async def acknowledge(self, user_id: str, device_id: str, position: str) -> None:
        """Forget the device's frames up to and including ``position``."""


Known = Callable[[str, str], Awaitable[bool]]
Relay = Callable[[str, str, bytes], Awaitable[None]]


def check_position(position: str) -> str:
    if not _POSITION.match(position):
        raise Invalid("since is not a cursor this server returned")
    return position


def frame_of(sender_id: str, sender_device: str, message: ToDevice) -> bytes:
    return orjson.dumps(
        {
            "type": "to_device",
            "sender_id": sender_id,
            "sender_device": sender_device,
            "type_of": message.type,
            "ciphertext": message.ciphertext,
        }
    )


async def send_to_devices(
    sender_id: str,
    sender_device: str,
    messages: Sequence[ToDevice],
    *,
    queue: ToDeviceQueue,
    known: Known,
    relay: Relay,
) -> int:
    """Queue and relay each message; every one is checked first, so a bad one sends none."""
    if len(messages) > MAX_MESSAGES_PER_CALL:
        raise Invalid(f"messages: at most {MAX_MESSAGES_PER_CALL} per call")
    for i, m in enumerate(messages):
        if not is_valid_user_id(m.user_id) or not is_valid_user_id(m.device_id):
            raise Invalid(f"messages.{i}: user_id and device_id are 1-64 characters of [A-Za-z0-9_.@-]")
        if not m.type or len(m.type) > MAX_TYPE_CHARS:
            raise Invalid(f"messages.{i}.type: 1-{MAX_TYPE_CHARS} characters")
        if not m.ciphertext:
            raise Invalid(f"messages.{i}.ciphertext: empty")
        if len(m.ciphertext) > MAX_CIPHERTEXT_CHARS:
            raise TooLarge(f"messages.{i}.ciphertext: over {MAX_CIPHERTEXT_CHARS} characters")
    for i, m in enumerate(messages):
        # Only devices that published keys can have been encrypted to; this also keeps anyone
        # from filling queues under made-up device names.
        if not await known(m.user_id, m.device_id):
            raise NotFound(f"messages.{i}: no device {m.device_id!r} with keys for user {m.user_id!r}")
    for m in messages:
        frame = frame_of(sender_id, sender_device, m)
        await queue.add(m.user_id, m.device_id, frame, max_len=MAX_PENDING, ttl_s=TTL_S)
        await relay(m.user_id, m.device_id, frame)
    return len(messages)


async def pending_for(
    user_id: str, device_id: str, since: str | None, *, queue: ToDeviceQueue, limit: int
) -> tuple[list[dict[str, Any]], str | None, bool]:
    """What a sync hands the device: the frames after ``since`` (which it has now seen, so they
    are forgotten), the position to put in the next cursor, and whether more are queued."""
    if since is not None:
        await queue.acknowledge(user_id, device_id, since)
    rows = await queue.after(user_id, device_id, since, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    position = rows[-1][0] if rows else since
    return [orjson.loads(frame) for _, frame in rows], position, more
