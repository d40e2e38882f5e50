"""The key directory of end-to-end encryption: devices publish public keys, others claim them.

The server only ever holds public keys. Each uploaded key is checked before anything is stored:
unpadded base64 of the right length (Curve25519 and Ed25519 keys: 32 bytes, signatures: 64),
and an Ed25519 signature by the device's signing key, verified with ``cryptography``. A claim
hands each one-time key out at most once, ever: the store's ``try_claim`` is a conditional
write (a Cassandra lightweight transaction) that only one claimer can win, whichever gateway it
runs on; the claim is then a fact in the log (``OneTimeKeyClaimed``).
"""

from __future__ import annotations

import base64
import binascii
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from commands.ports import EventLog
from events import (
    DeviceKeysDeleted,
    DeviceKeysPublished,
    KeyEvent,
    OneTimeKeyClaimed,
    OneTimeKeysAdded,
    SignedKey,
    is_valid_user_id,
)
from events.errors import Conflict, Invalid
from projections.views import DeviceKeys

KEY_BYTES = 32  # Curve25519 and Ed25519 public keys
SIGNATURE_BYTES = 64  # Ed25519
MAX_KEYS_PER_CALL = 100
MAX_CLAIMS_PER_CALL = 100
# How many unclaimed keys a claim reads to pick from at random: concurrent claimers of one device
# then mostly try different keys, and a lost race costs one more conditional write, not a re-read.
CLAIM_WINDOW = 32
CLAIM_ROUNDS = 8
_KEY_ID = re.compile(r"^[A-Za-z0-9+/_.:=-]{1,64}$")


@dataclass(frozen=True)
class ClaimedKey:
    user_id: str
    device_id: str
    key_id: str
    key: str
    signature: str
    fallback: bool


class KeyStore(Protocol):
    """Where the key directory lives (``projections.keys.CassandraKeys``)."""

    async def device(self, user_id: str, device_id: str) -> DeviceKeys | None:
        """The device's published keys, or None."""

    async def devices(self, user_id: str) -> list[DeviceKeys]:
        """Every device of the user with published keys."""

    async def key_ids(self, user_id: str, device_id: str) -> set[str]:
        """The ids of every one-time key the device uploaded since its keys were last deleted."""

    async def write(self, events: Sequence[KeyEvent]) -> None:
        """Write ``events`` through to the directory, as its projection would."""

    async def unclaimed(self, user_id: str, device_id: str, limit: int) -> list[SignedKey]:
        """Up to ``limit`` one-time keys of the device not known to be claimed."""

    async def try_claim(
        self, user_id: str, device_id: str, key: SignedKey, claimed_by: str, claim_id: str
    ) -> bool:
        """Atomically claim ``key`` for ``claimed_by`` under ``claim_id`` (unique per attempt);
        False when it was already claimed by another attempt."""

    async def fallback(self, user_id: str, device_id: str) -> SignedKey | None:
        """The device's fallback key, or None."""

    async def remaining(self, user_id: str, device_id: str) -> int:
        """How many one-time keys of the device are unclaimed."""


def decode_b64(value: str, field: str, *, size: int) -> bytes:
    """The bytes of unpadded standard base64 ``value``, which must be ``size`` bytes long."""
    if not isinstance(value, str) or "=" in value or not value.isascii():
        raise Invalid(f"{field}: not unpadded base64")
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Invalid(f"{field}: not unpadded base64") from exc
    if len(raw) != size:
        raise Invalid(f"{field}: {len(raw)} bytes, {size} expected")
    return raw


def verify_signature(signing_key: str, message: str, signature: str, field: str) -> None:
    """``Invalid`` unless ``signature`` is the Ed25519 signature by ``signing_key`` of the
    UTF-8 bytes of ``message``."""
    public = Ed25519PublicKey.from_public_bytes(decode_b64(signing_key, "signing_key", size=KEY_BYTES))
    raw = decode_b64(signature, f"{field}.signature", size=SIGNATURE_BYTES)
    try:
        public.verify(raw, message.encode())
    except InvalidSignature as exc:
        raise Invalid(f"{field}.signature: not a valid signature by the device's signing key") from exc


def check_signed_key(signing_key: str, key: SignedKey, field: str) -> None:
    if not _KEY_ID.match(key.key_id):
        raise Invalid(f"{field}.key_id: 1-64 characters of [A-Za-z0-9+/_.:=-]")
    decode_b64(key.key, f"{field}.key", size=KEY_BYTES)
    verify_signature(signing_key, key.key, key.signature, field)


def _now_ms(clock: Callable[[], float]) -> int:
    return int(clock() * 1000)


async def publish_device_keys(
    user_id: str,
    device_id: str,
    identity_key: str,
    signing_key: str,
    signature: str,
    *,
    store: KeyStore,
    log: EventLog,
    clock: Callable[[], float] = time.time,
) -> DeviceKeysPublished | None:
    """Publish the device's keys; None when the same keys are already published (a retry)."""
    decode_b64(identity_key, "identity_key", size=KEY_BYTES)
    verify_signature(signing_key, identity_key, signature, "identity_key")
    current = await store.device(user_id, device_id)
    if current is not None:
        if (current.identity_key, current.signing_key) == (identity_key, signing_key):
            return None
        raise Conflict("this device already has other keys: DELETE /v1/keys/device first")
    event = DeviceKeysPublished(
        user_id=user_id,
        device_id=device_id,
        identity_key=identity_key,
        signing_key=signing_key,
        signature=signature,
        ts=_now_ms(clock),
    )
    await log.append(event)
    await store.write([event])
    return event


async def delete_device_keys(
    user_id: str, device_id: str, *, store: KeyStore, log: EventLog, clock: Callable[[], float] = time.time
) -> DeviceKeysDeleted:
    event = DeviceKeysDeleted(user_id=user_id, device_id=device_id, ts=_now_ms(clock))
    await log.append(event)
    await store.write([event])
    return event


async def add_one_time_keys(
    user_id: str,
    device_id: str,
    keys: Sequence[SignedKey],
    fallback: SignedKey | None,
    *,
    store: KeyStore,
    log: EventLog,
    clock: Callable[[], float] = time.time,
) -> int:
    """Store the device's signed one-time keys (and fallback key); the count unclaimed after."""
    if len(keys) > MAX_KEYS_PER_CALL:
        raise Invalid(f"keys: at most {MAX_KEYS_PER_CALL} per call")
    device = await store.device(user_id, device_id)
    if device is None:
        raise Conflict("publish this device's keys (PUT /v1/keys/device) before its one-time keys")
    ids = [k.key_id for k in keys]
    if len(set(ids)) != len(ids):
        raise Invalid("keys: a key_id appears twice")
    for i, key in enumerate(keys):
        check_signed_key(device.signing_key, key, f"keys.{i}")
    if fallback is not None:
        check_signed_key(device.signing_key, fallback, "fallback")
    used = await store.key_ids(user_id, device_id) & set(ids)
    if used:
        raise Conflict(f"key_id already used by this device: {sorted(used)[0]}")
    if keys or fallback is not None:
        event = OneTimeKeysAdded(
            user_id=user_id, device_id=device_id, keys=tuple(keys), fallback=fallback, ts=_now_ms(clock)
        )
        await log.append(event)
        await store.write([event])
    return await store.remaining(user_id, device_id)


async def claim_keys(
    claimer: str,
    devices: Sequence[tuple[str, str]],
    *,
    store: KeyStore,
    log: EventLog,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
) -> list[ClaimedKey]:
    """One key per asked device: an unclaimed one-time key, won by a conditional write; else
    the fallback key; a device with neither is left out. ``claimer`` is ``user_id/device_id``."""
    if len(devices) > MAX_CLAIMS_PER_CALL:
        raise Invalid(f"devices: at most {MAX_CLAIMS_PER_CALL} per call")
    for user_id, device_id in devices:
        if not is_valid_user_id(user_id) or not is_valid_user_id(device_id):
            raise Invalid("devices: user_id and device_id are 1-64 characters of [A-Za-z0-9_.@-]")
    pick = rng or random.Random()
    out: list[ClaimedKey] = []
    for user_id, device_id in dict.fromkeys(devices):
        key = await _claim_one(claimer, user_id, device_id, store=store, log=log, clock=clock, rng=pick)
        if key is not None:
            out.append(key)
            continue
        fallback = await store.fallback(user_id, device_id)
        if fallback is not None:
            f = fallback
            out.append(ClaimedKey(user_id, device_id, f.key_id, f.key, f.signature, fallback=True))
    return out


async def _claim_one(
    claimer: str,
    user_id: str,
    device_id: str,
    *,
    store: KeyStore,
    log: EventLog,
    clock: Callable[[], float],
    rng: random.Random,
) -> ClaimedKey | None:
    for _ in range(CLAIM_ROUNDS):
        candidates = await store.unclaimed(user_id, device_id, CLAIM_WINDOW)
        if not candidates:
            return None
        rng.shuffle(candidates)
        for key in candidates:
            claim_id = str(uuid.uuid4())
            if await store.try_claim(user_id, device_id, key, claimer, claim_id):
                event = OneTimeKeyClaimed(
                    user_id=user_id,
                    device_id=device_id,
                    key_id=key.key_id,
                    key=key.key,
                    claimed_by=claimer,
                    claim_id=claim_id,
                    ts=_now_ms(clock),
                )
                # Won: the key is this claimer's whatever happens next. Should the append fail,
                # the claim answers 503 and the key is never handed out (at most once holds).
                await log.append(event)
                await store.write([event])
                return ClaimedKey(user_id, device_id, key.key_id, key.key, key.signature, False)
    return None
