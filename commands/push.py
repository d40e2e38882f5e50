"""Push registrations and mutes: validate, append the event, write it through.

Each is a fact on the user-events topic (keyed by user). The handler appends first and then
writes the same rows the notify worker's projection writes, so a registration, its deletion
and a mute hold for every message acknowledged after the response (read-your-writes). A
write-through that fails is only logged: the event is durable and the worker applies it.

Registrations are checked before anything is appended; a bad one is ``Invalid`` (400) or
``Forbidden`` (403) and leaves no trace.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from commands.ports import EventLog
from events import ChatEvent, ConversationMuted, PushProvider, PushRegistered, PushUnregistered
from events.errors import Forbidden, Invalid, Unavailable

log = logging.getLogger(__name__)

MAX_URL_CHARS = 2048
MAX_TOKEN_CHARS = 4096
# FCM registration tokens: letters, digits, '-', '_' and ':'; APNs device tokens: hex.
_FCM_TOKEN = re.compile(r"[A-Za-z0-9_:\-]{16,4096}")
_APNS_TOKEN = re.compile(r"[0-9a-fA-F]{64,200}")


class PushSettingsWriter(Protocol):
    async def apply(self, events: Sequence[ChatEvent]) -> None: ...


@dataclass(frozen=True)
class RegisterPush:
    user_id: str
    token_device_id: str  # the device the caller's token names
    device_id: str  # the device in the path
    provider: PushProvider
    endpoint: str | None = None
    token: str | None = None
    p256dh: str | None = None
    auth: str | None = None


@dataclass(frozen=True)
class AllowedHosts:
    """Hosts a registration may point at, by provider (lower-case host names or literal IPs)."""

    webhook: Collection[str]
    webpush: Collection[str]


def _b64url(value: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise Invalid(f"keys.{what}: not base64url") from exc


def check_url(endpoint: str | None, allowed: Collection[str], what: str) -> str:
    """An http(s) URL without credentials on an allowed host (no server-side request forgery
    through a registration)."""
    if not endpoint or len(endpoint) > MAX_URL_CHARS:
        raise Invalid(f"endpoint: a URL of at most {MAX_URL_CHARS} characters is required")
    try:
        parts = urlsplit(endpoint)
        port = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise Invalid(f"endpoint: not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("endpoint: an http or https URL is required")
    if parts.username is not None or parts.password is not None:
        raise Invalid("endpoint: credentials in the URL are not allowed")
    if port == 0:
        raise Invalid("endpoint: not a valid port")
    if parts.hostname.lower() not in {h.lower() for h in allowed}:
        raise Invalid(f"endpoint: host {parts.hostname!r} is not allowed for {what}")
    return endpoint


def check_webpush_keys(p256dh: str | None, auth: str | None) -> None:
    """``p256dh``: an uncompressed P-256 point (65 bytes); ``auth``: 16 bytes; both base64url."""
    if not p256dh or not auth:
        raise Invalid("keys: p256dh and auth are required for webpush")
    point = _b64url(p256dh, "p256dh")
    if len(point) != 65 or point[0] != 4:
        raise Invalid("keys.p256dh: not an uncompressed P-256 public key")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError as exc:
        raise Invalid("keys.p256dh: not a point on P-256") from exc
    if len(_b64url(auth, "auth")) != 16:
        raise Invalid("keys.auth: must be 16 bytes")


def decide_register(cmd: RegisterPush, *, hosts: AllowedHosts, ts: int) -> PushRegistered:
    if cmd.device_id != cmd.token_device_id:
        raise Forbidden("a device registers only itself (the token's device)")
    if cmd.provider == "webhook":
        endpoint = check_url(cmd.endpoint, hosts.webhook, "webhooks")
        return PushRegistered(
            user_id=cmd.user_id, device_id=cmd.device_id, provider="webhook", endpoint=endpoint, ts=ts
        )
    if cmd.provider == "webpush":
        endpoint = check_url(cmd.endpoint, hosts.webpush, "web push")
        check_webpush_keys(cmd.p256dh, cmd.auth)
        return PushRegistered(
            user_id=cmd.user_id,
            device_id=cmd.device_id,
            provider="webpush",
            endpoint=endpoint,
            p256dh=cmd.p256dh,
            auth=cmd.auth,
            ts=ts,
        )
    pattern = _FCM_TOKEN if cmd.provider == "fcm" else _APNS_TOKEN
    if not cmd.token or not pattern.fullmatch(cmd.token):
        raise Invalid(f"token: not a valid {cmd.provider} device token")
    return PushRegistered(
        user_id=cmd.user_id, device_id=cmd.device_id, provider=cmd.provider, token=cmd.token, ts=ts
    )


async def _append(log_: EventLog, store: PushSettingsWriter, event: ChatEvent) -> None:
    await log_.append(event)
    try:
        await store.apply([event])
    except Unavailable:
        log.warning("%s of %s is in the log but not yet in the read model", event.type, event.user_id)  # type: ignore[union-attr]


async def register_push(
    cmd: RegisterPush,
    *,
    log: EventLog,
    store: PushSettingsWriter,
    hosts: AllowedHosts,
    clock: Callable[[], int],
) -> PushRegistered:
    event = decide_register(cmd, hosts=hosts, ts=clock())
    await _append(log, store, event)
    return event


async def unregister_push(
    user_id: str,
    token_device_id: str,
    device_id: str,
    *,
    log: EventLog,
    store: PushSettingsWriter,
    clock: Callable[[], int],
) -> None:
    if device_id != token_device_id:
        raise Forbidden("a device unregisters only itself (the token's device)")
    await _append(
        log, store, PushUnregistered(user_id=user_id, device_id=device_id, reason="deleted", ts=clock())
    )


async def set_muted(
    user_id: str,
    conversation_id: str,
    muted: bool,
    *,
    log: EventLog,
    store: PushSettingsWriter,
    clock: Callable[[], int],
) -> None:
    """The caller must be a member (checked by the caller with ``require_member``)."""
    await _append(
        log,
        store,
        ConversationMuted(user_id=user_id, conversation_id=conversation_id, muted=muted, ts=clock()),
    )
