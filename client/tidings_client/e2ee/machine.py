"""End-to-end encryption for the SDK: Olm device sessions and Megolm group sessions, all of the
cryptography done by vodozemac (the Rust implementation; never libolm, no ratchet of our own).

``E2EE`` is one device's crypto state and its key flows; it talks to the server only through a
``KeyServer`` (the ``TidingsClient`` is one; the unit tests use an in-memory one):

- the device's ``Account`` (Curve25519 identity key, Ed25519 signing key) is published with
  ``PUT /v1/keys/device``; signed one-time keys and a fallback key with ``POST /v1/keys/one-time``,
  topped up again whenever fewer than half of ``one_time_keys_target`` remain on the server;
- a send in an encrypted conversation is encrypted with the conversation's outbound Megolm
  session; its room key goes first to every device of every member (the sender's own other
  devices too) that has not got it yet, each as a to-device Olm message (an Olm session made
  from a claimed one-time key, or the one already held);
- the outbound session is replaced (rotated) when a device it was shared with is no longer a
  member's device (a member left, a device was deleted or changed its keys), after
  ``rotate_after_messages`` messages or after ``rotate_after_s`` seconds;
- received room keys (to-device Olm messages, inbound sessions made from pre-key messages)
  become inbound Megolm sessions, and an ``encrypted`` message decrypts with the one its
  ``session_id`` names, only if that session came from the message's sender device, for that
  conversation.

The whole state is pickled by vodozemac with a 32-byte key derived from a passphrase by Scrypt
(``cryptography``) and kept in a ``KeyStore`` (a file, or memory).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import vodozemac

from tidings_client.e2ee.keystore import SCRYPT_N, KeyStore, MemoryKeyStore, derive_pickle_key
from tidings_client.errors import Conflict
from tidings_client.models import Message

log = logging.getLogger("tidings_client.e2ee")

ALGORITHM = "megolm.v1"
"""The ``algorithm`` of an encrypted message."""
TO_DEVICE_TYPE = "olm.v1"
"""The ``type`` of the to-device messages this SDK sends (an Olm message in a JSON envelope)."""
MAX_TO_DEVICE_PER_CALL = 100


class E2EEError(Exception):
    """Something end-to-end encryption could not do."""


class WrongPassphrase(E2EEError):
    """The key store could not be opened with this passphrase."""


class DecryptionError(E2EEError):
    """A message or to-device message could not be decrypted (or was not what it claimed)."""


class MissingRoomKey(DecryptionError):
    """No room key for the message's Megolm session (not shared with this device, or not yet)."""


class KeyServer(Protocol):
    """What ``E2EE`` needs of the server (``TidingsClient`` implements it over HTTP)."""

    async def e2ee_members(self, conversation_id: str) -> list[str]:
        """The user ids of the conversation's members now."""
        ...

    async def e2ee_user_devices(self, user_id: str) -> list[dict[str, Any]]:
        """``GET /v1/keys/users/{user_id}``'s ``devices``."""
        ...

    async def e2ee_claim(self, devices: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        """``POST /v1/keys/claim``'s ``keys``."""
        ...

    async def e2ee_send_to_device(self, messages: Sequence[dict[str, str]]) -> None:
        """``POST /v1/to-device`` (≤ 100 messages)."""
        ...

    async def e2ee_put_device_keys(self, body: dict[str, str]) -> None:
        """``PUT /v1/keys/device`` (``Conflict`` when other keys are published for the device)."""
        ...

    async def e2ee_delete_device_keys(self) -> None:
        """``DELETE /v1/keys/device``."""
        ...

    async def e2ee_upload_one_time_keys(self, body: dict[str, Any]) -> int:
        """``POST /v1/keys/one-time``; the ``remaining`` count."""
        ...

    async def e2ee_one_time_key_count(self) -> int:
        """``GET /v1/keys/count``'s ``remaining``."""
        ...


@dataclass(frozen=True)
class DeviceKeys:
    """A device's published keys, its signature checked."""

    user_id: str
    device_id: str
    identity_key: str
    signing_key: str

    @property
    def ref(self) -> tuple[str, str, str]:
        """The device with its identity key: a device that changes its keys is another device."""
        return (self.user_id, self.device_id, self.identity_key)


@dataclass
class _Outbound:
    session: vodozemac.GroupSession
    created_s: float
    messages: int = 0
    shared: set[tuple[str, str, str]] = field(default_factory=set)


@dataclass
class _Inbound:
    session: vodozemac.InboundGroupSession
    conversation_id: str
    sender_id: str
    sender_device: str
    sender_key: str
    # message index -> message_id: one index used by two messages is a replay
    indices: dict[int, str] = field(default_factory=dict)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _verify(signing_key: str, text: str, signature: str) -> bool:
    try:
        vodozemac.Ed25519PublicKey.from_base64(signing_key).verify_signature(
            text.encode("utf-8"), vodozemac.Ed25519Signature.from_base64(signature)
        )
    except (ValueError, TypeError):  # vodozemac's key, decode and signature errors are ValueErrors
        return False
    return True


class E2EE:
    """One device's end-to-end encryption: its Olm account, Olm sessions with other devices,
    and Megolm sessions per conversation. Open it with ``await E2EE.open(...)`` (or
    ``TidingsClient.enable_e2ee``); every change of its state is saved to ``store`` at once,
    pickled with the passphrase's key."""

    def __init__(
        self,
        user_id: str,
        device_id: str,
        server: KeyServer,
        *,
        store: KeyStore,
        pickle_key: bytes,
        salt: bytes,
        account: vodozemac.Account,
        rotate_after_messages: int = 100,
        rotate_after_s: float = 7 * 24 * 3600,
        one_time_keys_target: int = 50,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.server = server
        self.store = store
        self.rotate_after_messages = rotate_after_messages
        self.rotate_after_s = rotate_after_s
        self.one_time_keys_target = min(one_time_keys_target, account.max_number_of_one_time_keys)
        self.clock = clock
        self.on_room_key: Callable[[str], None] | None = None
        """Called with a Megolm ``session_id`` when its room key arrives (the client decrypts
        the messages that waited for it)."""
        self._pickle_key = pickle_key
        self._salt = salt
        self.account = account
        self._published = False
        self._olm: dict[str, list[vodozemac.Session]] = {}  # peer identity key -> sessions, newest last
        self._outbound: dict[str, _Outbound] = {}  # conversation_id -> its outbound session
        self._inbound: dict[str, _Inbound] = {}  # session_id -> inbound session
        self._devices: dict[str, list[DeviceKeys]] = {}  # user_id -> devices (a cache)
        self._processed: OrderedDict[str, None] = OrderedDict()  # hashes of handled to-device messages
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- opening and storage ----------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        user_id: str,
        device_id: str,
        server: KeyServer,
        *,
        passphrase: str,
        store: KeyStore | None = None,
        publish: bool = True,
        scrypt_n: int = SCRYPT_N,
        **options: Any,
    ) -> E2EE:
        """The device's E2EE state from ``store`` (opened with ``passphrase``), or a new account
        if the store is empty; then (``publish``) its keys are published and one-time keys
        topped up. ``WrongPassphrase`` if the store holds a state this passphrase does not open."""
        store = store if store is not None else MemoryKeyStore()
        text = await store.load()
        if text is None:
            salt = os.urandom(16)
            key = await asyncio.to_thread(derive_pickle_key, passphrase, salt, n=scrypt_n)
            e2ee = cls(
                user_id,
                device_id,
                server,
                store=store,
                pickle_key=key,
                salt=salt,
                account=vodozemac.Account(),
                **options,
            )
            e2ee._scrypt_n = scrypt_n
        else:
            state = json.loads(text)
            if state.get("user_id") != user_id or state.get("device_id") != device_id:
                raise E2EEError("the key store belongs to another device")
            salt = _unb64(state["salt"])
            n = int(state.get("scrypt_n", SCRYPT_N))
            key = await asyncio.to_thread(derive_pickle_key, passphrase, salt, n=n)
            try:
                account = vodozemac.Account.from_pickle(state["account"], key)
            except ValueError as exc:
                raise WrongPassphrase("the passphrase does not open this key store") from exc
            e2ee = cls(
                user_id, device_id, server, store=store, pickle_key=key, salt=salt, account=account, **options
            )
            e2ee._scrypt_n = n
            e2ee._restore(state)
        await e2ee._save()
        if publish:
            await e2ee.publish()
        return e2ee

    _scrypt_n: int = SCRYPT_N

    def _restore(self, state: dict[str, Any]) -> None:
        key = self._pickle_key
        self._published = bool(state.get("published"))
        self._olm = {
            ik: [vodozemac.Session.from_pickle(p, key) for p in pickles]
            for ik, pickles in state.get("olm", {}).items()
        }
        for cid, o in state.get("outbound", {}).items():
            self._outbound[cid] = _Outbound(
                vodozemac.GroupSession.from_pickle(o["pickle"], key),
                float(o["created_s"]),
                int(o["messages"]),
                {(u, d, ik) for u, d, ik in o["shared"]},
            )
        for sid, i in state.get("inbound", {}).items():
            self._inbound[sid] = _Inbound(
                vodozemac.InboundGroupSession.from_pickle(i["pickle"], key),
                i["conversation_id"],
                i["sender_id"],
                i["sender_device"],
                i["sender_key"],
            )
        self._processed = OrderedDict((h, None) for h in state.get("processed", []))

    def _state(self) -> str:
        key = self._pickle_key
        return json.dumps(
            {
                "version": 1,
                "user_id": self.user_id,
                "device_id": self.device_id,
                "salt": _b64(self._salt),
                "scrypt_n": self._scrypt_n,
                "published": self._published,
                "account": self.account.pickle(key),
                "olm": {ik: [s.pickle(key) for s in sessions] for ik, sessions in self._olm.items()},
                "outbound": {
                    cid: {
                        "pickle": o.session.pickle(key),
                        "created_s": o.created_s,
                        "messages": o.messages,
                        "shared": sorted(o.shared),
                    }
                    for cid, o in self._outbound.items()
                },
                "inbound": {
                    sid: {
                        "pickle": i.session.pickle(key),
                        "conversation_id": i.conversation_id,
                        "sender_id": i.sender_id,
                        "sender_device": i.sender_device,
                        "sender_key": i.sender_key,
                    }
                    for sid, i in self._inbound.items()
                },
                "processed": list(self._processed),
            }
        )

    async def _save(self) -> None:
        await self.store.save(self._state())

    # ---- the device's keys --------------------------------------------------------------------

    @property
    def identity_key(self) -> str:
        """This device's Curve25519 identity key (base64)."""
        return self.account.curve25519_key.to_base64()

    @property
    def signing_key(self) -> str:
        """This device's Ed25519 signing key (base64)."""
        return self.account.ed25519_key.to_base64()

    def _sign(self, text: str) -> str:
        return self.account.sign(text.encode("utf-8")).to_base64()

    def device_keys(self) -> dict[str, str]:
        """The body of ``PUT /v1/keys/device``."""
        return {
            "identity_key": self.identity_key,
            "signing_key": self.signing_key,
            "signature": self._sign(self.identity_key),
        }

    async def publish(self) -> None:
        """Publish the device keys (a device whose old keys are still published, e.g. after its
        store was lost, deletes them first), then top up one-time keys and the fallback key."""
        async with self._lock:
            if not self._published:
                try:
                    await self.server.e2ee_put_device_keys(self.device_keys())
                except Conflict:
                    log.warning("device %s had other keys published: replacing them", self.device_id)
                    await self.server.e2ee_delete_device_keys()
                    await self.server.e2ee_put_device_keys(self.device_keys())
                self._published = True
                await self._upload_one_time_keys(0, fallback=True)
            else:
                await self._top_up(await self.server.e2ee_one_time_key_count())

    async def replenish(self) -> int:
        """Ask the server how many one-time keys remain and top them up below half the target;
        how many remain now."""
        async with self._lock:
            return await self._top_up(await self.server.e2ee_one_time_key_count())

    async def _top_up(self, remaining: int) -> int:
        if remaining * 2 >= self.one_time_keys_target:
            return remaining
        return await self._upload_one_time_keys(remaining, fallback=False)

    async def _upload_one_time_keys(self, remaining: int, *, fallback: bool) -> int:
        count = max(0, self.one_time_keys_target - remaining)
        self.account.generate_one_time_keys(count)
        body: dict[str, Any] = {
            "keys": [
                {"key_id": key_id, "key": k.to_base64(), "signature": self._sign(k.to_base64())}
                for key_id, k in sorted(self.account.one_time_keys.items())
            ]
        }
        if fallback:
            self.account.generate_fallback_key()  # type: ignore[attr-defined]
            fallback_keys: dict[str, vodozemac.Curve25519PublicKey] = self.account.fallback_key  # type: ignore[attr-defined]
            ((key_id, k),) = fallback_keys.items()
            body["fallback"] = {
                "key_id": key_id,
                "key": k.to_base64(),
                "signature": self._sign(k.to_base64()),
            }
        # Saved before the upload: a key the server may hand out must never be one we forgot.
        await self._save()
        left = await self.server.e2ee_upload_one_time_keys(body)
        self.account.mark_keys_as_published()
        await self._save()
        return left

    # ---- devices ------------------------------------------------------------------------------

    def device_list_changed(self, user_id: str) -> None:
        """A ``device_list`` frame (or sync's ``device_lists``): read the user's devices again
        before the next share (a new device gets the room key; a gone one rotates the session)."""
        self._devices.pop(user_id, None)

    def cached_devices(self, user_id: str) -> list[DeviceKeys] | None:
        """The user's devices as last read (``None``: to be read again before the next share)."""
        return self._devices.get(user_id)

    async def devices(self, user_id: str) -> list[DeviceKeys]:
        """The user's devices with valid self-signed keys (cached until ``device_list_changed``)."""
        cached = self._devices.get(user_id)
        if cached is not None:
            return cached
        out: list[DeviceKeys] = []
        for d in await self.server.e2ee_user_devices(user_id):
            try:
                keys = DeviceKeys(user_id, str(d["device_id"]), str(d["identity_key"]), str(d["signing_key"]))
                good = _verify(keys.signing_key, keys.identity_key, str(d["signature"]))
            except (KeyError, TypeError):
                good = False
            if not good:
                log.warning(
                    "device %s of %s has keys without a valid signature: ignored", d.get("device_id"), user_id
                )
                continue
            out.append(keys)
        self._devices[user_id] = out
        return out

    async def _device(self, user_id: str, device_id: str) -> DeviceKeys | None:
        for refresh in (False, True):
            if refresh:
                self.device_list_changed(user_id)
            for d in await self.devices(user_id):
                if d.device_id == device_id:
                    return d
        return None

    # ---- encrypting ---------------------------------------------------------------------------

    def outbound_session_id(self, conversation_id: str) -> str | None:
        """The current outbound Megolm session of a conversation (``None``: none yet)."""
        out = self._outbound.get(conversation_id)
        return out.session.session_id if out is not None else None

    async def encrypt(self, conversation_id: str, content: dict[str, Any]) -> dict[str, str]:
        """The fields of an ``encrypted`` send carrying ``content`` (``{"kind": "text",
        "body": ...}``), after the room key reached every member device that lacks it."""
        async with self._lock:
            members = await self.server.e2ee_members(conversation_id)
            if self.user_id not in members:
                raise E2EEError(f"not a member of {conversation_id}")
            targets: list[DeviceKeys] = []
            for member in members:
                for d in await self.devices(member):
                    if (d.user_id, d.device_id) != (self.user_id, self.device_id):
                        targets.append(d)
            current = {d.ref for d in targets}
            out = self._outbound.get(conversation_id)
            reason = self._rotation_reason(out, current)
            if out is None or reason is not None:
                if out is not None:
                    log.info("new Megolm session for %s: %s", conversation_id, reason)
                out = self._new_outbound(conversation_id)
            missing = [d for d in targets if d.ref not in out.shared]
            if missing:
                await self._share(conversation_id, out, missing)
            plaintext = json.dumps({**content, "conversation_id": conversation_id}).encode("utf-8")
            ciphertext = out.session.encrypt(plaintext).to_base64()
            out.messages += 1
            # Saved before the send: a ratchet index is never used twice, even across a crash.
            await self._save()
            return {
                "kind": "encrypted",
                "ciphertext": ciphertext,
                "algorithm": ALGORITHM,
                "session_id": out.session.session_id,
                "sender_device": self.device_id,
            }

    def _rotation_reason(self, out: _Outbound | None, current: set[tuple[str, str, str]]) -> str | None:
        if out is None:
            return None
        if out.messages >= self.rotate_after_messages:
            return f"{out.messages} messages"
        if self.clock() - out.created_s >= self.rotate_after_s:
            return "age"
        gone = out.shared - current
        if gone:
            return f"{len(gone)} device(s) no longer members' devices"
        return None

    def _new_outbound(self, conversation_id: str) -> _Outbound:
        session = vodozemac.GroupSession()
        out = _Outbound(session, self.clock())
        self._outbound[conversation_id] = out
        # This device reads its own messages (history, sync) with the same key.
        self._inbound[session.session_id] = _Inbound(
            vodozemac.InboundGroupSession(session.session_key),
            conversation_id,
            self.user_id,
            self.device_id,
            self.identity_key,
        )
        return out

    async def _share(self, conversation_id: str, out: _Outbound, devices: list[DeviceKeys]) -> None:
        need = [d for d in devices if d.identity_key not in self._olm]
        if need:
            claimed = await self.server.e2ee_claim([(d.user_id, d.device_id) for d in need])
            by_device = {(str(k["user_id"]), str(k["device_id"])): k for k in claimed}
            for d in need:
                k = by_device.get((d.user_id, d.device_id))
                if k is None:
                    log.warning(
                        "no one-time key for %s/%s: it cannot read %s",
                        d.user_id,
                        d.device_id,
                        conversation_id,
                    )
                    continue
                if not _verify(d.signing_key, str(k["key"]), str(k["signature"])):
                    log.warning(
                        "a one-time key of %s/%s has a bad signature: not used", d.user_id, d.device_id
                    )
                    continue
                session = self.account.create_outbound_session(
                    vodozemac.Curve25519PublicKey.from_base64(d.identity_key),
                    vodozemac.Curve25519PublicKey.from_base64(str(k["key"])),
                )
                self._olm[d.identity_key] = [session]
        session_key = out.session.session_key.to_base64()
        messages: list[dict[str, str]] = []
        sent_to: list[DeviceKeys] = []
        for d in devices:
            if d.identity_key not in self._olm:
                continue
            payload = {
                "type": "room_key",
                "algorithm": ALGORITHM,
                "conversation_id": conversation_id,
                "session_id": out.session.session_id,
                "session_key": session_key,
                "sender_id": self.user_id,
                "sender_device": self.device_id,
                "sender_signing_key": self.signing_key,
                "recipient_id": d.user_id,
                "recipient_device": d.device_id,
                "recipient_key": d.identity_key,
            }
            messages.append(
                {
                    "user_id": d.user_id,
                    "device_id": d.device_id,
                    "type": TO_DEVICE_TYPE,
                    "ciphertext": self._olm_encrypt(d.identity_key, json.dumps(payload)),
                }
            )
            sent_to.append(d)
        await self._save()  # the Olm ratchets moved
        for start in range(0, len(messages), MAX_TO_DEVICE_PER_CALL):
            await self.server.e2ee_send_to_device(messages[start : start + MAX_TO_DEVICE_PER_CALL])
        out.shared.update(d.ref for d in sent_to)

    def _olm_encrypt(self, identity_key: str, plaintext: str) -> str:
        session = self._olm[identity_key][-1]
        message_type, body = session.encrypt(plaintext.encode("utf-8")).to_parts()
        return json.dumps({"sender_key": self.identity_key, "type": message_type, "body": _b64(body)})

    # ---- receiving ----------------------------------------------------------------------------

    async def receive_to_device(self, frame: dict[str, Any]) -> bool:
        """Handle one ``to_device`` frame (or sync entry): a room key becomes an inbound session.
        Whether it was new and valid; a bad one is logged and dropped (it can come from anyone)."""
        async with self._lock:
            try:
                return await self._receive(frame)
            except (DecryptionError, ValueError, KeyError, TypeError) as exc:
                log.warning(
                    "a to-device message from %s/%s was dropped: %s",
                    frame.get("sender_id"),
                    frame.get("sender_device"),
                    exc,
                )
                return False

    async def _receive(self, frame: dict[str, Any]) -> bool:
        if frame.get("type_of") != TO_DEVICE_TYPE:
            log.info("to-device message of type %r ignored", frame.get("type_of"))
            return False
        ciphertext = str(frame["ciphertext"])
        digest = hashlib.sha256(ciphertext.encode()).hexdigest()
        if digest in self._processed:
            return False  # pushed, then found again by a sync
        sender_id, sender_device = str(frame["sender_id"]), str(frame["sender_device"])
        envelope = json.loads(ciphertext)
        sender_key = str(envelope["sender_key"])
        device = await self._device(sender_id, sender_device)
        if device is None or device.identity_key != sender_key:
            raise DecryptionError("the sender key is not the sending device's published identity key")
        plaintext, pre_key = self._olm_decrypt(
            sender_key, int(envelope["type"]), _unb64(str(envelope["body"]))
        )
        self._processed[digest] = None
        while len(self._processed) > 1000:
            self._processed.popitem(last=False)
        payload = json.loads(plaintext)
        if (payload.get("sender_id"), payload.get("sender_device")) != (sender_id, sender_device) or (
            payload.get("recipient_id"),
            payload.get("recipient_device"),
            payload.get("recipient_key"),
        ) != (self.user_id, self.device_id, self.identity_key):
            await self._save()
            raise DecryptionError("the to-device message names another sender or recipient")
        if payload.get("sender_signing_key") != device.signing_key:
            await self._save()
            raise DecryptionError("the to-device message names another signing key")
        new = False
        if payload.get("type") == "room_key" and payload.get("algorithm") == ALGORITHM:
            new = self._import_room_key(payload, sender_key)
        await self._save()
        if pre_key:
            # The sender claimed one of our one-time keys: top them up (not under the lock).
            task = asyncio.get_running_loop().create_task(self._replenish_logged())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if new and self.on_room_key is not None:
            self.on_room_key(str(payload["session_id"]))
        return new

    async def _replenish_logged(self) -> None:
        try:
            await self.replenish()
        except Exception as exc:  # noqa: BLE001 - the next pre-key message tries again
            log.warning("could not top up one-time keys: %s", exc)

    def _olm_decrypt(self, sender_key: str, message_type: int, body: bytes) -> tuple[str, bool]:
        message = vodozemac.AnyOlmMessage.from_parts(message_type, body)
        sessions = self._olm.setdefault(sender_key, [])
        pre_key = message.to_pre_key()
        for session in reversed(sessions):
            if pre_key is not None and not session.session_matches(pre_key):
                continue
            try:
                return session.decrypt(message).decode("utf-8"), False
            except ValueError:
                continue
        if pre_key is None:
            raise DecryptionError("no Olm session decrypts this message")
        try:
            session, plaintext = self.account.create_inbound_session(
                vodozemac.Curve25519PublicKey.from_base64(sender_key), pre_key
            )
        except ValueError as exc:
            raise DecryptionError(f"no Olm session could be made: {exc}") from exc
        sessions.append(session)
        del sessions[:-4]  # the newest few per peer device
        return plaintext.decode("utf-8"), True

    def _import_room_key(self, payload: dict[str, Any], sender_key: str) -> bool:
        session = vodozemac.InboundGroupSession(vodozemac.SessionKey(str(payload["session_key"])))
        session_id = str(payload["session_id"])
        if session.session_id != session_id:
            raise DecryptionError("the room key is not for the session it names")
        known = self._inbound.get(session_id)
        if known is not None:
            if (known.sender_id, known.sender_device, known.sender_key) != (
                str(payload["sender_id"]),
                str(payload["sender_device"]),
                sender_key,
            ):
                raise DecryptionError("a room key for a session another device sent")
            if known.session.first_known_index <= session.first_known_index:
                return False
        self._inbound[session_id] = _Inbound(
            session,
            str(payload["conversation_id"]),
            str(payload["sender_id"]),
            str(payload["sender_device"]),
            sender_key,
            known.indices if known is not None else {},
        )
        return True

    def has_room_key(self, session_id: str) -> bool:
        """Whether this device holds the inbound session ``session_id``."""
        return session_id in self._inbound

    def decrypt(self, message: Message) -> Message:
        """The message with its plaintext (``body``, and the ``kind`` it was sent as);
        ``MissingRoomKey`` if this device has no key for it, ``DecryptionError`` if it does not
        decrypt or is not what it claims (another sender, conversation, or a replay)."""
        if message.algorithm != ALGORITHM:
            raise DecryptionError(f"unknown algorithm {message.algorithm!r}")
        inbound = self._inbound.get(message.session_id or "")
        if inbound is None:
            raise MissingRoomKey(f"no room key for session {message.session_id}")
        if (inbound.conversation_id, inbound.sender_id, inbound.sender_device) != (
            message.conversation_id,
            message.sender_id,
            message.sender_device,
        ):
            raise DecryptionError("the session belongs to another sender or conversation")
        try:
            decrypted = inbound.session.decrypt(vodozemac.MegolmMessage.from_base64(message.ciphertext or ""))
        except ValueError as exc:
            raise DecryptionError(f"the ciphertext does not decrypt: {exc}") from exc
        earlier = inbound.indices.setdefault(decrypted.message_index, message.message_id)
        if earlier != message.message_id:
            raise DecryptionError(f"a replay of message {earlier}")
        content = json.loads(decrypted.plaintext)
        if content.get("conversation_id") != message.conversation_id:
            raise DecryptionError("the plaintext was sent to another conversation")
        body = content.get("body")
        return replace(
            message,
            kind=str(content.get("kind") or "text"),
            body=body if isinstance(body, str) else None,
            decryption_error=None,
        )
