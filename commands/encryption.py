"""End-to-end encrypted conversations: turning encryption on, and what a send must carry.

A group is encrypted from its creation (``GroupCreated.encrypted``); a direct conversation the
first time either side asks (``EncryptionEnabled``). Nothing turns it off. In an encrypted
conversation every message is ``kind: "encrypted"`` with the client's ciphertext, which the
server stores and fans out unchanged; ``kind: "encrypted"`` anywhere else is refused, so a
client can never believe it sent ciphertext where others read plaintext, or the reverse.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from typing import Any

from commands.ports import Directory, EventLog, IdGenerator
from events import EncryptionEnabled, dm_members, snowflake_ts
from events.errors import Invalid, TooLarge, Unavailable

log_ = logging.getLogger(__name__)

MAX_CIPHERTEXT_CHARS = 64 * 1024
MAX_ALGORITHM_CHARS = 64
MAX_SESSION_ID_CHARS = 128
# Algorithm names as Matrix spells them (``megolm.v1``, ``m.megolm.v1.aes-sha2``).
_ALGORITHM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SESSION_ID = re.compile(r"^[A-Za-z0-9+/=_-]+$")
ENVELOPE_FIELDS = ("ciphertext", "algorithm", "session_id")


def check_envelope(
    *,
    device_id: str,
    ciphertext: str | None,
    algorithm: str | None,
    session_id: str | None,
    sender_device: str | None,
) -> None:
    """Refuse an ``encrypted`` send whose fields are missing or malformed. The ciphertext must
    be standard base64 (padding optional) of at most 64 KiB; ``sender_device`` must be the
    token's device (a device speaks for itself only)."""
    if not ciphertext:
        raise Invalid("ciphertext: an encrypted message needs its ciphertext")
    if len(ciphertext) > MAX_CIPHERTEXT_CHARS:
        raise TooLarge(f"ciphertext: over {MAX_CIPHERTEXT_CHARS} characters")
    bare = ciphertext.rstrip("=")
    if len(bare) % 4 == 1 or len(ciphertext) - len(bare) > 2:
        raise Invalid("ciphertext: not base64")
    try:
        base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Invalid("ciphertext: not base64") from exc
    if not algorithm or len(algorithm) > MAX_ALGORITHM_CHARS or not _ALGORITHM.match(algorithm):
        raise Invalid(f"algorithm: 1-{MAX_ALGORITHM_CHARS} characters of [A-Za-z0-9._-], e.g. megolm.v1")
    if not session_id or len(session_id) > MAX_SESSION_ID_CHARS or not _SESSION_ID.match(session_id):
        raise Invalid(f"session_id: 1-{MAX_SESSION_ID_CHARS} characters of base64")
    if sender_device != device_id:
        raise Invalid("sender_device: must be the device of the token")


def check_kind(*, encrypted: bool, kind: str, fields: dict[str, Any]) -> None:
    """The rule between a conversation's encryption and a send's kind (400 either way)."""
    if encrypted and kind != "encrypted":
        raise Invalid("this conversation is end-to-end encrypted: a send must be kind 'encrypted'")
    if not encrypted and kind == "encrypted":
        raise Invalid("kind 'encrypted' is only for end-to-end encrypted conversations")
    if kind != "encrypted" and any(
        fields.get(name) is not None for name in (*ENVELOPE_FIELDS, "sender_device")
    ):
        raise Invalid("ciphertext, algorithm, session_id and sender_device go with kind 'encrypted' only")


async def enable_direct_encryption(
    actor_id: str, conversation_id: str, *, log: EventLog, directory: Directory, ids: IdGenerator
) -> EncryptionEnabled | None:
    """Make the direct conversation encrypted, for good; ``None`` when it already is. The event
    is written through to the read model right after the append, so the next send (on any
    gateway) is held to it."""
    members = dm_members(conversation_id)
    if members is None or actor_id not in members:
        raise Invalid("not a direct conversation of the caller")
    if await directory.encrypted(conversation_id):
        return None
    event_id = ids.next_id()
    event = EncryptionEnabled(
        conversation_id=conversation_id, event_id=event_id, actor_id=actor_id, ts=snowflake_ts(event_id)
    )
    await log.append(event)
    try:
        await directory.apply([event])
    except Unavailable:
        # In the log, so it holds: the worker writes the read model when it is back. Until then
        # a send may still be judged against the old state (see docs/e2ee.md).
        log_.warning("encryption of %s is in the log but not yet in the read model", conversation_id)
    return event
